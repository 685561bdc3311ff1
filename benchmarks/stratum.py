"""Cost of converging on the stratum (DESIGN.md section 8) against one gradient and the plain check.

    python benchmarks/stratum.py [dx dh m] [--perturb 1e-8] [--repeats 3]

Two planted exactly stationary points: ``common.stationary_instance`` (no data on kinks) and
``common.kink_instance`` (dh = 1, 50 data points on the kink, held there), each moved by
``perturb * |z|`` in a random direction. Prints, per instance and solver, the best wall time of
``converge_on_stratum`` over ``repeats`` runs, that time in gradients (``common.gradient_seconds``),
the Newton steps, the relative gradient reached, and the distances to the start and to the planted
point; then the wall time of ``check`` on the perturbed point, for scale. ``cpu`` ratios use process
CPU time (BLAS runs single-threaded), which other jobs on a shared machine inflate less than wall time.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (first: it pins the BLAS threads before NumPy loads)
import numpy as np  # noqa: E402
from sospcheck import Direction  # noqa: E402
from sospcheck.stratum import converge_on_stratum  # noqa: E402


def _perturbed(net, size: float, seed: int):
    z = net.as_direction()
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal(a.shape) for a in (z.W1, z.b1, z.W2, z.b2)]
    d = Direction(*parts)
    return net.perturbed(d, size * z.norm() / d.norm())


def _cpu_seconds(fn, n: int = 1) -> float:
    """Smallest process CPU time of ``fn()`` over 3 batches of ``n`` calls, per call."""
    best = float("inf")
    for _ in range(3):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t0) / n)
    return best


def run(dx: int, dh: int, m: int, perturb: float, repeats: int) -> None:
    cases = [("stationary", common.stationary_instance(m, dx, dh, seed=0)),
             ("kink M=50", common.kink_instance(50, dx, m, seed=0))]
    print(f"{common.machine_info()}\nperturbation {perturb:g} * |z|")
    for name, inst in cases:
        planted, X, Y = inst["net"], inst["X"], inst["Y"]
        B = np.zeros((m, planted.dh), dtype=bool)
        B[inst.get("on", []), 0] = True  # the planted kink pairs
        start = _perturbed(planted, perturb, 12345)  # not the seeds of the instance: its weights
        z0 = planted.as_direction().vector()
        tg = common.gradient_seconds(start, X, Y)
        params = common.net_params(start)
        cg = _cpu_seconds(lambda: common.loss_and_grad(params, X, Y), 50)
        print(f"\n{name} (dx, dh, m) = ({planted.dx}, {planted.dh}, {m}), M = {int(B.sum())}, "
              f"one gradient {tg * 1e3:.2f} ms")
        for solver in ("dense", "matrix_free"):
            res = None

            def go(solver=solver):
                nonlocal res
                res = converge_on_stratum(start, X, Y, common.SQUARED, 1.0, 0.0, B, solver=solver)

            t = common.best_time(go, repeats=repeats) if repeats > 1 else common.timed(go)[0]
            c = _cpu_seconds(go)
            back = np.linalg.norm(res.net.as_direction().vector() - z0) / np.linalg.norm(z0)
            print(f"  {solver:12s} {t:7.3f} s = {t / tg:5.0f} gradients (cpu {c / cg:5.0f}); {res.status.value}, "
                  f"{res.steps} steps ({len(res.history) - 1} trials), relative gradient {res.history[0].relative_gradient:.1e} -> "
                  f"{res.relative_gradient:.1e}; moved {res.relative_distance:.2e}, to planted {back:.2e}; "
                  f"R(z*) - R(z) = {res.loss_change:.3e}")
        tc, chk = common.timed_check(start, X, Y)
        print(f"  plain check  {tc:7.3f} s = {tc / tg:5.0f} gradients; {common.describe_result(chk)}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("size", nargs="*", type=int, default=[100, 10, 10000], help="dx dh m")
    p.add_argument("--perturb", type=float, default=1e-8)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    run(*a.size, a.perturb, a.repeats)
