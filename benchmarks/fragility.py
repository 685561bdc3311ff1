"""What the fragility verdicts cost at the benchmark points (not part of ``run.py``):

    .venv/bin/python benchmarks/fragility.py

``check`` with default settings (fragility on) against ``fragility=False`` at the benign planted
stationary points of (a), ``(dx, dh, m) = (100, 1, 10000)`` and ``(100, 10, 10000)``: best of n,
the two interleaved. ``fragility phase`` is ``result.timings["fragility"]``: the re-runs at
tolerances x10 / x0.1, which run only where a decision's margin lies within 10x of its tolerance.
"""

from __future__ import annotations

import time

import common  # noqa: F401  (first: it pins the BLAS threads before NumPy loads)
from sospcheck import check

POINTS = (((100, 1, 10000), 9), ((100, 10, 10000), 5))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    for (dx, dh, m), n in POINTS:
        inst = common.stationary_instance(m, dx, dh)
        net, X, Y = inst["net"], inst["X"], inst["Y"]
        off, on, phase = [], [], []
        for _ in range(n):
            off.append(timed(lambda: check(net, X, Y, fragility=False))[0])
            t, res = timed(lambda: check(net, X, Y))
            on.append(t)
            phase.append(res.timings["fragility"])
        print(f"(dx, dh, m) = {(dx, dh, m)}: fragility=False {min(off):.3f} s, default {min(on):.3f} s "
              f"(ratio {min(on) / min(off):.2f}; fragility phase {min(phase) * 1e3:.2f} ms); verdict "
              f"{res.verdict.value}, fragile {res.fragile}", flush=True)


if __name__ == "__main__":
    main()
