"""Issue 15: the benign full check at the paper's sizes, against a gradient, the smooth autograd test and
the size of the data (not part of ``run.py``):

    nice -n 5 .venv/bin/python benchmarks/benign.py [--cases a,b,c,d] [--repeats 3] [--no-smooth]
        [--no-memory] [--scaling 2,4] [--cache DIR] [--json OUT.json] [--backend torch --device cuda]

Cases (planted exactly stationary strict minima, ``common.planted_minimum``; squared loss, sum):
  a  (dx, dh, m) = (100, 1, 10000), dy = 1
  b  (100, 10, 10000), dy = 1
  c  (1000, 10, 10000), dy = 2 (p = 10032; dy = 1 cannot be planted there: m < dh (dx + 2) + 1), residuals
     of norm 0.01 sqrt(m) (with 0.1 sqrt(m) the planted point is a saddle: the check finds negative curvature)
  d  (100, 10, 10000), dy = 1, 10 data points on kinks (one per neuron)
  e  (100, 10, 10000), dy = 2

Per case, in this process: one gradient (``common.loss_and_grad``), ``check(fragility=False)`` and
``check()`` (default settings, fragility from margins) as CPU seconds (``time.process_time``, BLAS on one
thread), best of ``--repeats`` turns after one warm-up call each, the three taking turns (``timings``:
another job on the machine slows the memory-bound gradient by up to 2x, so both sides of a ratio
should see the same load); the smooth autograd test (``smooth_baseline.smooth_test``, eigsh on torch HVPs, ARPACK tol
1e-9) once, in a fresh interpreter, stopped after ``--smooth-limit`` CPU seconds (then its time is a lower
bound). Ratios are between numbers of the same run. Peak memory: ``probe.py`` in a fresh interpreter per path (the
default check, and ``solver="matrix_free"`` where the default is dense), (peak resident set of the
stage - resident set of the interpreter before the data) / bytes of X, X and Y included; measured twice:
cold (the interpreter has only imported the libraries) and after a warm-up check on a 2000-point instance
of the same widths (``probe.warm_up``), whose baseline already holds the fixed costs that do not grow
with the data (the BLAS/LAPACK work buffers, allocator pools). With ``--scaling`` the cold measurement is
repeated at ``m`` times each factor (same widths) for the cases on the dense path, and fitted as ``fixed +
slope |X|`` (:func:`memory_scaling`).
With ``--backend torch`` the checks run with the data on ``--device`` and the wall seconds are printed
too (the GPU's work does not show in the CPU seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402  (first: it pins the BLAS threads before NumPy loads)
import numpy as np  # noqa: E402
from sospcheck import check  # noqa: E402

# points of the warm-up instance of the memory measurement: enough for full-rank data at dx = 1000
WARM_UP_POINTS = 2000

CASES = {
    "a": dict(m=10000, dx=100, dh=1, dy=1, kink_pairs=0),
    "b": dict(m=10000, dx=100, dh=10, dy=1, kink_pairs=0),
    "c": dict(m=10000, dx=1000, dh=10, dy=2, kink_pairs=0, residual_scale=0.01),
    "d": dict(m=10000, dx=100, dh=10, dy=1, kink_pairs=10),
    "e": dict(m=10000, dx=100, dh=10, dy=2, kink_pairs=0),
}


def cpu_once(fn) -> tuple[float, float, object]:
    """CPU and wall seconds of one call of ``fn()``, and its result."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c0, time.perf_counter() - t0, out


def gradient_cpu(net, X, Y, batches: int = 7) -> float:
    """Best CPU seconds of one full-batch gradient, from batches of calls of at least 50 ms each."""
    params = common.net_params(net)
    common.loss_and_grad(params, X, Y)
    best = np.inf
    for _ in range(batches):
        n, c0 = 0, time.process_time()
        while True:
            common.loss_and_grad(params, X, Y)
            n += 1
            if time.process_time() - c0 > 0.05:
                break
        best = min(best, (time.process_time() - c0) / n)
    return best


def timings(net, X, Y, repeats: int, engine: dict | None = None) -> dict:
    """Best CPU (and wall) seconds of the gradient, ``check(fragility=False)`` and ``check()``, measured in
    turns (gradient, check, check, gradient, ...) after one warm-up call each: the other jobs of a shared
    machine slow a memory-bound gradient by up to 2x, and taking turns exposes both to the same load."""
    engine = engine or {}
    off = lambda: check(net, X, Y, fragility=False, **engine)  # noqa: E731
    on = lambda: check(net, X, Y, **engine)  # noqa: E731
    off(), on()
    best = {"gradient_s": np.inf, "check_off_s": np.inf, "check_off_wall_s": np.inf, "check_s": np.inf,
            "check_wall_s": np.inf}
    results = {}
    for _ in range(repeats):
        best["gradient_s"] = min(best["gradient_s"], gradient_cpu(net, X, Y, batches=3))
        for key, fn in (("check_off", off), ("check", on)):
            c, w, results[key] = cpu_once(fn)
            best[key + "_s"], best[key + "_wall_s"] = min(best[key + "_s"], c), min(best[key + "_wall_s"], w)
    best["gradient_s"] = min(best["gradient_s"], gradient_cpu(net, X, Y, batches=3))
    return {**best, "results": results}


def _files(inst: dict, name: str, work: Path) -> tuple[str, str]:
    """The instance as the ``.npz`` files ``probe.py`` reads."""
    data = work / f"{name}_data.npz"
    if not data.exists():
        np.savez(data, X=inst["X"], Y=inst["Y"])
    net = inst["net"]
    netf = work / f"{name}_net.npz"
    np.savez(netf, W1=net.W1, b1=net.b1, W2=net.W2, b2=net.b2)
    return str(data), str(netf)


def smooth(inst: dict, name: str, work: Path, limit: int) -> dict:
    """The smooth autograd test in a fresh interpreter, stopped after ``limit`` CPU seconds: its record, with
    ``cpu_s`` its CPU seconds (a lower bound, the whole stage's, when ``interrupted``)."""
    data, netf = _files(inst, name, work)
    spec = {"data": {"npz": data}, "net": netf, "stages": [{"stage": "smooth", "cpu_limit": limit}]}
    rec = common.run_probe(spec, work, f"{name}_smooth", timeout=20 * limit + 300)
    out = rec.get("smooth", {"interrupted": rec.get("error"), "stage_cpu_s": float("nan")})
    # the test's own CPU seconds (without importing torch); the stage's when it was stopped
    out["cpu_s"] = out.get("cpu_s", out["stage_cpu_s"])
    return out


def memory(inst: dict, name: str, work: Path, solvers: list[str], warm: dict | None = None) -> dict:
    """Peak memory / bytes of X of ``check`` (default settings) per solver, each in a fresh interpreter;
    with ``warm`` (``planted_minimum``'s arguments for a small instance of the same widths) a second
    measurement whose baseline is taken after a check on that instance (``probe.warm_up``: library code
    and BLAS work buffers, which do not grow with the data, already resident)."""
    data, netf = _files(inst, name, work)
    out = {}
    runs = [(solver, None) for solver in solvers] + ([(solver, warm) for solver in solvers] if warm else [])
    for solver, w in runs:
        spec = {"data": {"npz": data}, "net": netf,
                "stages": [{"stage": "check", "label": "check", "solver": solver, "fragility": True}]}
        if w:
            spec["warm_up"] = {**w, "solver": solver}
        key = solver + (" warm" if w else "")
        rec = common.run_probe(spec, work, f"{name}_mem_{solver}{'_warm' if w else ''}", timeout=900)
        if "check" not in rec:
            out[key] = {"error": rec.get("error")}
            continue
        base = rec["start"]["rss"]
        out[key] = {"peak_over_X": (rec["check"]["rss_peak"] - base) / inst["X"].nbytes,
                    "peak_MiB": (rec["check"]["rss_peak"] - base) / 2**20, "solver_used": rec["check"]["solver"],
                    "verdict": rec["check"]["verdict"]}
    return out


def memory_scaling(spec: dict, key: str, work: Path, factors: list[int], cache: str) -> dict:
    """Cold peak memory of the default check on instances of the same widths with ``m`` times each factor,
    and the least-squares line ``peak = fixed + slope |X|``: ``slope`` is what grows with the data, ``fixed``
    (MiB) what does not (the reduced ``H``, whose size depends on the widths alone, library buffers and
    pages)."""
    points = []
    for f in factors:
        inst = common.planted_minimum(**{**spec, "m": spec["m"] * f}, cache=cache)
        rec = memory(inst, f"benign_{key}_x{f}", work, ["auto"])["auto"]
        points.append({"m": spec["m"] * f, "X_MiB": inst["X"].nbytes / 2**20, **rec})
    xs = np.array([p["X_MiB"] for p in points])
    ys = np.array([p.get("peak_MiB", np.nan) for p in points])
    slope, fixed = np.polyfit(xs, ys, 1) if len(points) > 1 and np.all(np.isfinite(ys)) else (np.nan, np.nan)
    return {"points": points, "slope": float(slope), "fixed_MiB": float(fixed)}


def run_case(key: str, args, work: Path) -> dict:
    spec = CASES[key]
    inst = common.planted_minimum(**spec, cache=args.cache)
    net, X, Y = inst["net"], inst["X"], inst["Y"]
    row = {"case": key, **spec, "stationarity": inst["stationarity"]}
    t = timings(net, X, Y, args.repeats, {"backend": args.backend, "device": args.device})
    r_off, r_on = t.pop("results").values()
    row.update(t)
    c_off, c_on = t["check_off_s"], t["check_s"]
    so = r_on.stats
    ecqp = next((q for q in so.qps if q.kind == "ECQP"), None)
    row.update(verdict_off=r_off.verdict.value, verdict=r_on.verdict.value, fragility=r_on.fragility,
               solver=so.solver, n=so.n_params_reduced, M=so.M, L=so.L, products=so.hessian_products,
               ecqp_detail=ecqp.detail if ecqp else None, min_eig=ecqp.min_eig if ecqp else None,
               eig_tol=so.eig_tol, timings=r_on.timings)
    print(f"[{key}] {spec}: gradient {row['gradient_s'] * 1e3:.3g} ms CPU; check off {c_off:.3g} s "
          f"({c_off / row['gradient_s']:.0f}x), default {c_on:.3g} s ({c_on / row['gradient_s']:.0f}x); "
          f"{row['verdict']} ({so.solver}, n = {so.n_params_reduced}, {so.hessian_products} products, "
          f"{row['ecqp_detail']})", flush=True)
    if args.backend == "torch":
        print(f"[{key}] {args.backend} on {args.device or 'default device'}: check wall {t['check_off_wall_s']:.3g} s "
              f"(fragility off), {t['check_wall_s']:.3g} s (default)", flush=True)
    if args.smooth:
        sm = smooth(inst, f"benign_{key}", work, args.smooth_limit)
        row["smooth"] = sm
        bound = ">" if sm.get("interrupted") else ""
        print(f"[{key}] smooth test {bound}{sm['cpu_s']:.3g} s CPU ({sm.get('products', '?')} HVPs, "
              f"{sm.get('verdict', sm.get('interrupted'))}); check/smooth {'<' if bound else ''}"
              f"{c_off / sm['cpu_s']:.3g} (default {c_on / sm['cpu_s']:.3g})", flush=True)
    if args.memory:
        solvers = ["auto"] + (["matrix_free"] if so.solver == "dense" else [])
        warm = {**spec, "m": WARM_UP_POINTS, "kink_pairs": min(spec.get("kink_pairs", 0), 2), "cache": args.cache}
        row["memory"] = memory(inst, f"benign_{key}", work, solvers, warm)
        print(f"[{key}] peak memory / X: {row['memory']}", flush=True)
    if args.scaling and so.solver == "dense":  # where the reduced H, fixed in m, is part of the peak
        sc = memory_scaling(spec, key, work, [1] + args.scaling, args.cache)
        row["scaling"] = sc
        print(f"[{key}] cold peak vs m: " + ", ".join(f"m = {p['m']}: {p['peak_MiB']:.1f} MiB ({p['peak_over_X']:.2f}x, "
              f"{p['solver_used']})" for p in sc["points"]) + f"; fit: {sc['fixed_MiB']:.1f} MiB + "
              f"{sc['slope']:.2f} |X|", flush=True)
    return row


def label(row: dict) -> str:
    """``(dx, dh, m)`` and what sets the case apart."""
    extra = f", dy = {row['dy']}" if row["dy"] != 1 else ""
    extra += f", {row['kink_pairs']} kink pairs" if row["kink_pairs"] else ""
    return f"({row['dx']}, {row['dh']}, {row['m']}){extra}, n = {row['n']}"


def markdown(rows: list[dict]) -> list[str]:
    """The issue's table: ratios to one gradient and to the smooth test, CPU seconds, peak memory / |X|."""
    out = ["| (dx, dh, m), reduced n | gradient (CPU) | check, fragility off | check, default | "
           "smooth test: check / smooth (default) | peak memory / size of X |", "|---|---|---|---|---|---|"]
    for r in rows:
        g = r["gradient_s"]
        off = f"**{r['check_off_s'] / g:.0f}x** ({r['check_off_s']:.3g} s; {r['solver']}, {r['products']} products)"
        on = f"**{r['check_s'] / g:.0f}x** ({r['check_s']:.3g} s), {r['verdict']}"
        sm = r.get("smooth")
        if sm:
            lt = "<" if sm.get("interrupted") else ""
            smooth = (f"**{lt}{r['check_off_s'] / sm['cpu_s']:.3g}** ({lt}{r['check_s'] / sm['cpu_s']:.3g}); smooth "
                      f"{'>' if lt else ''}{sm['cpu_s']:.3g} s, {sm.get('verdict', 'stopped')}")
        else:
            smooth = "-"
        mem = ", ".join(f"{v['peak_over_X']:.2f}x ({v['solver_used']}{', after warm-up' if k.endswith('warm') else ''})"
                        if "peak_over_X" in v else f"{k}: {v}" for k, v in r.get("memory", {}).items()) or "-"
        out.append(f"| {label(r)} | {g * 1e3:.3g} ms | {off} | {on} | {smooth} | {mem} |")
    scaled = [r for r in rows if r.get("scaling")]
    if scaled:
        out += ["", "| (dx, dh), default path | cold peak memory at m, ... (MiB, / size of X) | fit: fixed + slope x size of X |",
                "|---|---|---|"]
        for r in scaled:
            sc = r["scaling"]
            pts = "; ".join(f"m = {p['m']}: {p['peak_MiB']:.1f} MiB ({p['peak_over_X']:.2f}x)" for p in sc["points"])
            out.append(f"| ({r['dx']}, {r['dh']}){', dy = ' + str(r['dy']) if r['dy'] != 1 else ''}"
                       f"{', kink pairs' if r['kink_pairs'] else ''}, {sc['points'][0]['solver_used']} | {pts} | "
                       f"{sc['fixed_MiB']:.1f} MiB + {sc['slope']:.2f} x |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="a,b,c,d")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-smooth", dest="smooth", action="store_false")
    ap.add_argument("--smooth-limit", type=int, default=300, help="CPU seconds for the smooth test")
    ap.add_argument("--no-memory", dest="memory", action="store_false")
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "sospcheck-benign"))
    ap.add_argument("--backend", default="numpy", choices=["numpy", "torch"],
                    help="torch: the data passes and Hessian products on --device (wall seconds are then the measure)")
    ap.add_argument("--device", default=None, help="with --backend torch, e.g. cuda (default: a GPU when available)")
    ap.add_argument("--scaling", type=lambda v: [int(f) for f in v.split(",")], default=[],
                    help="e.g. 2,4: for the cases on the dense path, also the cold peak memory at m times each "
                         "factor (same widths), fitted as fixed + slope |X|")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    work = Path(args.cache)
    work.mkdir(parents=True, exist_ok=True)
    info = common.machine_info()
    print(f"machine: {info}", flush=True)
    rows = [run_case(k, args, work) for k in args.cases.split(",")]
    print("\n".join(markdown(rows)))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
