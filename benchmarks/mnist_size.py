"""MNIST-size run alone (issue 3, item e), e.g. with the torch backend on a GPU machine:

    python benchmarks/mnist_size.py [--m 60000] [--backend numpy|torch] [--limit 420] [--json OUT.json]

The same measurement as ``run.py --only e`` (see ``run.mnist_run``): m x 784 Gaussian inputs,
dh = 1000, dy = 10, a random point with its output layer refit; the check, the first-order pieces,
3 Hessian-vector products and the matrix-free second-order phase forced on the point (stopped after
``--limit`` seconds), each with its peak memory. ``--backend torch`` puts the data on a PyTorch device
(a GPU when one is present) for the check, the first-order pieces and the second-order phase: every
product with the data and the Hessian products run there; the elementwise work stays NumPy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402,F401  (pins the BLAS threads before NumPy loads)
from run import mnist_run  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=60000)
    ap.add_argument("--backend", default="numpy", choices=["numpy", "torch"])
    ap.add_argument("--limit", type=float, default=420.0, help="seconds for the forced second-order phase")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sospcheck-mnist-") as tmp:
        out = mnist_run(args.m, Path(tmp), args.limit, args.backend)
    out["machine"] = common.machine_info()
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
