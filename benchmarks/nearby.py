"""Cost of nearby mode (DESIGN.md section 8.6) against the plain check.

    python benchmarks/nearby.py [--sizes 100,1,10000 100,10,10000] [--perturb 1e-8] [--repeats 3]

Instances: ``common.stationary_instance`` (an exactly first-order stationary ReLU net, no data on a
kink), moved by ``perturb * |z|`` in a random direction. Per size, the best wall time (and process
CPU time, which other jobs on a shared machine inflate less) over ``repeats`` runs of
``check(..., fragility=False)`` and of ``check(..., fragility=False, nearby=True)``, their ratio,
what nearby mode itself took (``result.timings["nearby"]``: the stratum iteration plus the check at
``z*`` and, at a strict minimum, its certified radius), the verdicts at the weights and at ``z*``, the Newton steps, the distance to ``z*`` and to
the planted point, ``R(z*) - R(z)``, and the certified radius ``r*`` (its time, and whether the
weights lie inside it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (first: it pins the BLAS threads before NumPy loads)
import numpy as np  # noqa: E402
from sospcheck import Direction, check  # noqa: E402


def _perturbed(net, size: float, seed: int):
    z = net.as_direction()
    rng = np.random.default_rng(seed)
    d = Direction(*[rng.standard_normal(a.shape) for a in (z.W1, z.b1, z.W2, z.b2)])
    return net.perturbed(d, size * z.norm() / d.norm())


def _best(fn, repeats: int) -> tuple[float, float, object]:
    """Smallest wall and process CPU time of ``fn()`` over ``repeats`` runs, and its last result."""
    wall = cpu = float("inf")
    out = None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu, out


def run(dx: int, dh: int, m: int, perturb: float, repeats: int) -> None:
    inst = common.stationary_instance(m, dx, dh, seed=0)
    planted, X, Y = inst["net"], inst["X"], inst["Y"]
    start = _perturbed(planted, perturb, 12345)
    z0 = planted.as_direction().vector()
    tp, cp, plain = _best(lambda: check(start, X, Y, fragility=False), repeats)
    tn, cn, near = _best(lambda: check(start, X, Y, fragility=False, nearby=True), repeats)
    nb = near.nearby
    line = (f"({dx}, {dh}, {m}): plain {tp:.3f} s (cpu {cp:.3f}), nearby mode {tn:.3f} s (cpu {cn:.3f}) = "
            f"{tn / tp:.2f}x wall, {cn / cp:.2f}x cpu; of which nearby {near.timings['nearby']:.3f} s; "
            f"verdict at z: {common.describe_result(plain)}")
    if nb.success:
        back = np.linalg.norm(nb.net.as_direction().vector() - z0) / np.linalg.norm(z0)
        line += (f"; at z*: {common.describe_result(nb.result)}, {nb.steps} Newton step(s), residual "
                 f"{nb.residual:.1e}, moved {nb.relative_distance:.2e} (to planted {back:.2e}), "
                 f"R(z*) - R(z) = {nb.loss_change:.3e}")
        if nb.certified_radius is not None:
            line += (f"; r* = {nb.certified_radius:.2e} ({nb.result.timings['radius']:.3f} s), your weights "
                     + ("inside" if nb.inside_certified_radius else "outside"))
    else:
        line += f"; no z*: {nb.status} ({nb.message})"
    print(line, flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="*", default=["100,1,10000", "100,10,10000"], help="dx,dh,m ...")
    p.add_argument("--perturb", type=float, default=1e-8)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    print(common.machine_info())
    print(f"perturbation {a.perturb:g} * |z|, best of {a.repeats}")
    for size in a.sizes:
        run(*(int(v) for v in size.split(",")), a.perturb, a.repeats)
