"""The dense ECQP solver's two paths, timed on one of ``benign.py``'s planted minima (not part of ``run.py``):

    .venv/bin/python benchmarks/dense_paths.py [--case b] [--repeats 3]

``DenseSubspace`` built on the point's reduced problem, then ``min_eig`` with the check's ``eig_tol``
(``1e-9 |H|``: the Cholesky factorisation certifies) and with ``eig_tol = |H|`` (above every eigenvalue:
the factorisation fails and ``eigh`` decides). CPU seconds, best of ``--repeats``, BLAS on one thread.
Run it with ``PYTHONPATH=<another tree>/src`` to time that tree (``common.py`` lets it win).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import common  # noqa: E402  (first: it pins the BLAS threads before NumPy loads)
import pieces  # noqa: E402
from benign import CASES  # noqa: E402
from sospcheck.dense_subspace import DenseSubspace  # noqa: E402
from sospcheck.reduced import ReducedProblem, constraint_blocks  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="b", choices=sorted(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "sospcheck-benign"))
    args = ap.parse_args(argv)
    inst = common.planted_minimum(**CASES[args.case], cache=args.cache)
    pt, boundary, neurons, red = pieces.reduction(inst["net"], inst["X"], inst["Y"])
    prob = ReducedProblem.of(pt, red, boundary)
    blocks = constraint_blocks(prob, neurons, red)
    best = {}
    for _ in range(args.repeats):
        for name, scale in (("certified", 1e-9), ("factorisation fails", 1.0)):
            t = time.process_time()
            sub = DenseSubspace(prob, blocks)
            eig = sub.min_eig(scale * sub.hessian_norm)
            best[name] = (min(best.get(name, (float("inf"),))[0], time.process_time() - t), eig.detail.split(" (")[1][:8].rstrip(")"))
    print(f"case {args.case} {CASES[args.case]}, n = {prob.n}: " + "; ".join(
        f"{name}: {sec:.3f} s ({how})" for name, (sec, how) in best.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
