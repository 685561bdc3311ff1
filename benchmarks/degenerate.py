"""Cost of the first-order test and of the whole check at a degenerate kink against the naive 2^M
enumeration (issue 14).

    .venv/bin/python benchmarks/degenerate.py [--naive-max-M 10] [--oracle-max-M 8] [--max-cells 4096] [--quick]

One neuron with ``M`` boundary rows of rank ``r`` (deficiency ``M - r``): generic rows (points in
general position on a kink inside an ``r``-dimensional data span) and duplicated rows (every point
twice: ``M / 2`` distinct hyperplanes). Ours: :func:`sospcheck.degenerate.degenerate_first_order`
(cell count, incremental enumeration with one or two cone projections (NNLS) per cell and hyperplane,
an interior point per cell, one NNLS per cell for the slope). Naive: for each of
the ``2^M`` sign vectors the LP ``min g_sigma . v`` over ``{sigma_i xbar_i . v >= 0, |v|_inf <= 1}``
(HiGHS), as the oracle does. Both are measured in this run up to ``--naive-max-M``; beyond it the
naive time is ``2^M`` times its per-LP time measured here (marked ``est``). A case whose count
exceeds ``--max-cells`` is reported "over budget" (what the check would answer), in no time.

Second table, the whole check (``check(..., fragility=False)``, first and second order) on one neuron
with ``M`` kink points of rank ``r`` among off-kink points, planted first-order stationary
(``tests/degenerate_instances.wide_kink_instance``: ``a_i > 0``; slopes ``s_i = 1`` on every kink point
("one flat cell": the cell where every ``t_i >= 0`` is a critical face, so the second order solves an
ICQP per face) or from ``{0, 1/2, 1}``). Naive: the brute-force oracle of the tests
(``tests/oracle.py``: ``2^M`` LPs for the first order, then all ``3^M`` faces ``tau`` of the sign
regions, an eigendecomposition and at most two LPs each), timed up to ``--oracle-max-M``; beyond it
``2^M + 3^M`` times its time per region or face, measured here at the last timed case (``est``).
"""

from __future__ import annotations

import argparse
import sys
import time
from itertools import product
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import common  # noqa: E402,F401  (single-threaded BLAS, sospcheck from src/)
import numpy as np  # noqa: E402
from scipy.optimize import linprog  # noqa: E402

from degenerate_instances import wide_kink_instance  # noqa: E402
from oracle import oracle_on  # noqa: E402
from sospcheck import TwoLayerNet, check  # noqa: E402
from sospcheck.arrangement import DEFAULT_MAX_CELLS  # noqa: E402
from sospcheck.degenerate import OVER_BUDGET, degenerate_first_order  # noqa: E402


def rows_of_rank(kind: str, M: int, r: int, rng) -> np.ndarray:
    """``M`` boundary rows of rank ``r`` in ``R^(r+1)`` (they all lie in ``Z_k^perp``)."""
    Q = np.linalg.qr(rng.standard_normal((r + 1, r)))[0]
    n = M // 2 if kind == "duplicated" else M
    G = rng.standard_normal((n, r)) @ Q.T
    return np.repeat(G, 2, axis=0) if kind == "duplicated" else G


def naive(Xk, a, c, sp, sm, limit: int | None = None) -> tuple[float, int, float]:
    """(min LP value, LPs solved, seconds) over the sign vectors (the first ``limit`` of them if given)."""
    best, n, t0 = 0.0, 0, time.perf_counter()
    for sigma in product((1, -1), repeat=len(Xk)):
        s = np.array(sigma)
        g = c + (np.where(s > 0, sp, sm) * a) @ Xk
        res = linprog(g, A_ub=-(s[:, None] * Xk), b_ub=np.zeros(len(Xk)), bounds=[(-1, 1)] * Xk.shape[1],
                      method="highs")
        best, n = min(best, res.fun), n + 1
        if limit is not None and n >= limit:
            break
    return best, n, time.perf_counter() - t0


def stationary_neuron(Xk, rng):
    """``a >= 0`` and ``c = -sum s_i a_i xbar_i`` with ``s_i`` in the slopes: ``f_k`` convex with 0 a
    subgradient, so no early exit helps either method (every cell is visited)."""
    a = rng.uniform(0.5, 2.0, len(Xk))
    return a, -(rng.uniform(0.0, 1.0, len(Xk)) * a) @ Xk


def first_order_table(args) -> None:
    """The first table (module docstring): ``degenerate_first_order`` against ``2^M`` LPs."""
    rng = np.random.default_rng(0)
    Ms = (6, 8, 10) if args.quick else (6, 8, 10, 12, 16, 24)
    cases = [("generic", M, r) for M in Ms for r in (2, 3, 4, 6) if r < M]
    cases += [("duplicated", M, r) for M in Ms for r in (3, 6) if r < M // 2]
    per_lp = None
    print(f"{'rows':>10} {'M':>3} {'rank':>4} {'def':>4} {'n':>3} {'count':>10} {'cells':>6} {'2^M/cells':>9} "
          f"{'NNLS':>7} {'LPs':>4} {'ours s':>8} {'naive s':>12} {'ratio':>9}")
    t_all = time.perf_counter()
    for kind, M, r in cases:
        Xk = rows_of_rank(kind, M, r, rng)
        a, c = stationary_neuron(Xk, rng)
        t0 = time.perf_counter()
        res = degenerate_first_order(Xk, a, c, 1.0, 0.0, max_cells=args.max_cells)
        ours = time.perf_counter() - t0
        cells = res.cells
        count = f"{cells.count}{'' if cells.count_exact else ' (bd)'}"
        if res.status == OVER_BUDGET:
            naive_s = f"{2.0**M * per_lp:.3g} est" if per_lp else "-"
            print(f"{kind:>10} {M:>3} {r:>4} {M - r:>4} {cells.hyperplanes.n:>3} {count:>10} {'over budget':>29} "
                  f"{ours:>8.3f} {naive_s:>12} {'-':>9}")
            continue
        assert res.status == "stationary", res.message
        if M <= args.naive_max_M:
            value, n_lp, naive_t = naive(Xk, a, c, 1.0, 0.0)
            assert value > -1e-7, value  # the naive method agrees: no descent
            per_lp = naive_t / n_lp
            naive_s = f"{naive_t:.3g}"
        else:
            _, n_lp, t_sample = naive(Xk, a, c, 1.0, 0.0, limit=256)
            per_lp = t_sample / n_lp
            naive_t = 2.0**M * per_lp
            naive_s = f"{naive_t:.3g} est"
        print(f"{kind:>10} {M:>3} {r:>4} {M - r:>4} {cells.hyperplanes.n:>3} {count:>10} {res.n_cells:>6} "
              f"{2**M / res.n_cells:>9.1f} {cells.n_nnls + res.n_cells:>7} {res.n_lps:>4} {ours:>8.3f} {naive_s:>12} "
              f"{naive_t / ours:>9.1f}")
    print(f"(n: distinct hyperplanes; count: cells known before solving, '(bd)' = the bound; NNLS: cone "
          f"projections incl. one slope per cell; naive: 2^M LPs of the oracle's kind, 'est' = 2^M x its per-LP "
          f"time in this run; ratio = naive / ours; total {time.perf_counter() - t_all:.1f} s)")


def whole_check_table(args) -> None:
    """The second table (module docstring): the whole check against the oracle's enumeration."""
    rng = np.random.default_rng(1)
    Ms = (4, 6, 8, 10, 12) if args.quick else (4, 6, 8, 10, 12, 16, 24)
    cases = [(M, r, dup, sv) for M in Ms for r, dup in ((2, False), (3, False), (4, False), (M // 2, True))
             for sv in ((1.0,), None) if 1 <= r < M and (r < 4 or M <= 16) and not (dup and r < 2)]
    per_unit = None
    print(f"\n{'M':>3} {'rank':>4} {'def':>4} {'rows':>10} {'slopes':>8} {'cells':>6} {'faces':>5} {'QPs':>4} "
          f"{'verdict':>14} {'1st s':>7} {'2nd s':>7} {'check s':>8} {'naive s':>11} {'ratio':>9}")
    t_all = time.perf_counter()
    for M, r, dup, sv in cases:
        inst = wide_kink_instance(rng, M, r, duplicated=dup, s_values=sv)
        net = TwoLayerNet(inst["W1"], inst["b1"], inst["W2"], inst["b2"])
        def run():
            return check(net, inst["X"], inst["Y"], fragility=False, budget={"max_cells": args.max_cells})

        res = run()
        ours = common.best_time(run, repeats=3)
        rec = res.neurons[0]
        if M <= args.oracle_max_M:
            t0 = time.perf_counter()
            o = oracle_on(inst)
            naive_t = time.perf_counter() - t0
            assert o.verdict == res.verdict.value, (M, r, o.verdict, res.summary())
            per_unit = naive_t / (o.n_regions + o.n_faces)
            naive_s = f"{naive_t:.3g}"
        else:
            naive_t = (2.0**M + 3.0**M) * per_unit
            naive_s = f"{naive_t:.3g} est"
        t1, t2 = res.timings.get("first_order", 0.0), res.timings.get("second_order", 0.0)
        print(f"{M:>3} {r:>4} {M - r:>4} {'duplicated' if dup else 'generic':>10} "
              f"{'all 1' if sv else '0,.5,1':>8} {rec.n_cells if rec.n_cells is not None else '-':>6} "
              f"{rec.n_faces if rec.n_faces is not None else '-':>5} {len(res.stats.qps):>4} "
              f"{res.reason_code.value:>14} {t1:>7.3f} {t2:>7.3f} {ours:>8.3f} {naive_s:>11} {naive_t / ours:>9.1f}")
    print(f"(def: rank deficiency M - rank; cells, faces: of the kink arrangement, critical faces with a ray; "
          f"QPs: ECQP + ICQPs; 1st / 2nd s: the check's phases (one run); check s: best of 3 whole checks; "
          f"naive: the oracle, 'est' = 2^M + 3^M times its time per region or face at the last timed case; "
          f"total {time.perf_counter() - t_all:.1f} s)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--naive-max-M", type=int, default=10, help="largest M whose 2^M LPs are all solved")
    ap.add_argument("--oracle-max-M", type=int, default=8, help="largest M the oracle is timed on (3^M faces)")
    ap.add_argument("--max-cells", type=int, default=DEFAULT_MAX_CELLS)
    ap.add_argument("--quick", action="store_true", help="M <= 10 (first table), M <= 12 (second)")
    args = ap.parse_args(argv)
    first_order_table(args)
    whole_check_table(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
