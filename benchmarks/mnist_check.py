"""The default check (fragility included) at the MNIST shape, CPU seconds, for before/after comparisons:

    .venv/bin/python benchmarks/mnist_check.py [--m 20000] [--repeats 2] [--src DIR]

m x 784 Gaussian inputs, dh = 1000, dy = 10, a random point with its output layer refit (as
``mnist_size.py``, whose check runs with fragility off); the check with its default settings, best of
``--repeats`` CPU seconds (BLAS on one thread), with the phase timings of that run. ``--src`` times the
``sospcheck`` of another source tree (e.g. a ``git worktree`` of an older commit) on the same instance.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--src", default=str(HERE.parent / "src"), help="the source tree whose sospcheck is timed")
    args = ap.parse_args(argv)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    sys.path.insert(0, args.src)
    import sospcheck  # first, so that common.py below uses this tree's package

    sys.path.insert(1, str(HERE))
    import common
    from sospcheck import check
    from sospcheck.snap import refit_output_layer

    X, Y = common.gaussian_data(args.m, 784, 10, 0)
    net, _ = refit_output_layer(common.random_net(784, 1000, 10, seed=0), X, Y, common.SQUARED, 1.0, 0.0)
    best = None
    for _ in range(args.repeats):
        c0 = time.process_time()
        res = check(net, X, Y)
        cpu = time.process_time() - c0
        if best is None or cpu < best[0]:
            best = (cpu, res)
    cpu, res = best
    print(f"{sospcheck.__file__}: m = {args.m}: check {cpu:.2f} s CPU (best of {args.repeats}), {res.verdict.value}, "
          f"fragility {res.fragility}; phases " + ", ".join(f"{k} {v:.2f} s" for k, v in res.timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
