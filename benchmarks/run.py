"""Benchmarks of issue 3: what ``check`` costs, measured against what people would otherwise run.

    .venv/bin/python benchmarks/run.py [--quick | --full] [--only a,b,c,d,e]

(a) full check / one full-batch gradient at trained points (+ the second-order phase forced on them)
(b) against naive enumeration of the 2^M sign regions, M = 4..16 (planted exactly stationary kinks)
(c) against the smooth autograd test (Lanczos on torch.func Hessian-vector products)
(d) scaling of the full pipeline in m, dx, dh (log-log fits)
(e) peak memory relative to |X|, and an MNIST-size run

Every ratio is between two numbers measured in the same run on the same machine. Cases that could run
long go to a child process (``probe.py``) with a time limit. Results are merged into
``benchmarks/results.json`` (so ``--only`` updates some sections and keeps the others) and rendered to
``benchmarks/RESULTS.md`` with the plots ``benchmarks/*.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common  # noqa: E402  (first: it pins the BLAS threads before NumPy loads)
import numpy as np  # noqa: E402
import report  # noqa: E402
from naive import naive_enumeration  # noqa: E402

SIZES_A = [(10, 1, 1000), (100, 1, 10000), (100, 10, 10000), (1000, 10, 10000)]
M_RANGE_B = list(range(4, 17))

CONFIG = {
    "quick": {
        "adam_iters": 1500, "second_order_limit": 30, "other_solver": False,
        "naive_max_M": 12, "naive_budget_s": 20.0, "smooth_limit": 30, "smooth_extra": (2000, 12, 4),
        "d_m": [2000, 4000, 8000, 16000], "d_dx": [12, 25, 50, 100], "d_dh": [2, 4, 8, 16],
        "d_base": (4000, 25, 4), "d_mf_m": [1000, 2000, 4000], "d_mf_dx": [10, 20, 40], "d_limit": 60,
        "mnist_m": 6000, "mnist_limit": 30,
    },
    "full": {
        "adam_iters": 4000, "second_order_limit": 180, "other_solver": True,
        "naive_max_M": 14, "naive_budget_s": 40.0, "smooth_limit": 180, "smooth_extra": (4000, 25, 4),
        "d_m": [2000, 4000, 8000, 16000, 32000, 64000], "d_dx": [12, 25, 50, 100, 200], "d_dh": [2, 4, 8, 16, 32],
        "d_base": (8000, 50, 8), "d_mf_m": [1000, 2000, 4000, 8000, 16000], "d_mf_dx": [10, 20, 40, 80],
        "d_limit": 180,
        "mnist_m": 60000, "mnist_limit": 300,
    },
}


def log(msg: str) -> None:
    print(msg, flush=True)


def save_net(net, path: Path) -> str:
    np.savez(path, W1=net.W1, b1=net.b1, W2=net.W2, b2=net.b2)
    return str(path)


def save_data(X, Y, path: Path) -> dict:
    np.savez(path, X=X, Y=Y)
    return {"npz": str(path)}


# ---------------------------------------------------------------------------------------------- (a)

def section_a(cfg: dict, work: Path, results: dict) -> dict:
    """Per size: Adam-trained point; one gradient; ``check(snap=True)``; the second-order phase forced on
    the snapped point (the benign-case cost). All timed in one child process per size."""
    rows = []
    for dx, dh, m in SIZES_A:
        X, Y = common.gaussian_data(m, dx, 1, seed=0)
        t_train, (net, info) = common.timed(lambda: common.train_adam(common.random_net(dx, dh, 1, 0), X, Y,
                                                                       cfg["adam_iters"]))
        name = f"a_{dx}_{dh}_{m}"
        snapped = work / f"{name}_snapped.npz"
        stages = [{"stage": "gradient"},
                  {"stage": "check", "snap": True, "save_net": str(snapped)},
                  {"stage": "second_order", "solver": "auto", "time_limit": cfg["second_order_limit"]}]
        if cfg["other_solver"] and (dh * (dx + 1) + dh + 1) <= 6000:
            stages.append({"stage": "second_order", "label": "second_order_mf", "solver": "matrix_free",
                           "time_limit": cfg["second_order_limit"] // 3})
        spec = {"data": {"m": m, "dx": dx, "dy": 1, "seed": 0}, "net": save_net(net, work / f"{name}.npz"),
                "stages": stages}
        rec = common.run_probe(spec, work, name, timeout=60 + 2 * len(stages) * cfg["second_order_limit"])
        row = {"dx": dx, "dh": dh, "m": m, "train": {**info, "seconds": t_train}, "probe": rec,
               "snapped_net": str(snapped)}
        row.update(_ratios_a(rec))
        rows.append(row)
        so = rec.get("second_order", {})
        log(f"(a) {(dx, dh, m)}: check/grad = {row.get('check_over_grad', float('nan')):.1f}x "
            f"({rec.get('check', {}).get('described')}); with forced 2nd order "
            f"{'>' if row.get('pipeline_is_bound') else '='} {row.get('pipeline_over_grad', float('nan')):.1f}x "
            f"({so.get('outcome', so.get('interrupted'))}, {so.get('products_counted')} products)")
    return {"rows": rows, "adam_iters": cfg["adam_iters"]}


def _ratios_a(rec: dict) -> dict:
    """check / gradient, and (check + forced second order) / gradient; when the forced phase hit its time
    limit the latter is a lower bound (``pipeline_is_bound``): the time it ran, less the first-order
    pieces it redid (the check's forward + first_order timings)."""
    g = rec.get("gradient", {}).get("seconds")
    ch = rec.get("check", {})
    so = rec.get("second_order", {})
    out = {}
    if not (g and ch.get("seconds")):
        return out
    out["check_over_grad"] = ch["seconds"] / g
    if "second_order_s" in so:
        out["pipeline_s"], out["pipeline_is_bound"] = ch["seconds"] + so["second_order_s"], False
    elif "interrupted" in so:
        redo = ch["timings"].get("forward", 0.0) + ch["timings"].get("first_order", 0.0)
        out["pipeline_s"], out["pipeline_is_bound"] = ch["seconds"] + max(0.0, so["seconds"] - redo), True
    if "pipeline_s" in out:
        out["pipeline_over_grad"] = out["pipeline_s"] / g
    return out


# ---------------------------------------------------------------------------------------------- (b)

def section_b(cfg: dict, work: Path, results: dict) -> dict:
    """Planted kink instances with exactly ``M`` boundary pairs (L = 0): check vs all-regions enumeration."""
    rows, per_region = [], None
    for M in M_RANGE_B:
        inst = common.kink_instance(M)
        net, X, Y = inst["net"], inst["X"], inst["Y"]
        res = common.check(net, X, Y, fragility=False)
        t_check = common.best_time(lambda: common.check(net, X, Y, fragility=False), repeats=5)
        t_default = common.best_time(lambda: common.check(net, X, Y), repeats=3)
        row = {"M": M, "check_s": t_check, "check_default_s": t_default, "verdict": common.describe_result(res),
               "stats_M": res.stats.M, "L": res.stats.L, "K": res.stats.K,
               "bvls_residual": max(res.stats.bvls_residual), "qps": [q.outcome for q in res.stats.qps]}
        if M <= cfg["naive_max_M"]:
            nv = naive_enumeration(net, X, Y, max_seconds=cfg["naive_budget_s"])
            row["naive"] = nv
            if nv["complete"]:
                per_region = nv["per_region_s"]
        if "naive" in row and row["naive"]["complete"]:
            row["naive_s"], row["naive_kind"] = row["naive"]["seconds"], "measured"
        elif per_region is not None:
            row["naive_s"], row["naive_kind"] = per_region * 2**M, "extrapolated"
        if "naive_s" in row:
            row["ratio"] = row["naive_s"] / t_check
        rows.append(row)
        log(f"(b) M={M}: check {t_check * 1e3:.2f} ms ({row['verdict']}, L={row['L']}), naive "
            f"{row.get('naive_s', float('nan')):.3g} s ({row.get('naive_kind')}), ratio {row.get('ratio', float('nan')):.3g}x")
    return {"rows": rows, "per_region_s": per_region, "instance": "dh=1, dx=16, m=200, dy=1"}


# ---------------------------------------------------------------------------------------------- (c)

def section_c(cfg: dict, work: Path, results: dict) -> dict:
    """The autograd Lanczos test at the snapped points of (a), plus planted kink and smooth minima."""
    from smooth_baseline import torch_available

    if not torch_available():
        log("(c) skipped: torch is not importable")
        return {"skipped": "torch is not importable in this environment"}
    rows = []
    smooth_stage = {"stage": "smooth", "arpack_tol": 1e-9, "time_limit": cfg["smooth_limit"]}
    for row_a in results.get("a", {}).get("rows", []):
        if not Path(row_a["snapped_net"]).exists():
            continue
        spec = {"data": {"m": row_a["m"], "dx": row_a["dx"], "dy": 1, "seed": 0}, "net": row_a["snapped_net"],
                "stages": [smooth_stage]}
        name = f"c_{row_a['dx']}_{row_a['dh']}_{row_a['m']}"
        rec = common.run_probe(spec, work, name, timeout=cfg["smooth_limit"] + 120)
        ours = row_a["probe"].get("check", {})
        rows.append(_compare_c(f"trained (dx, dh, m) = ({row_a['dx']}, {row_a['dh']}, {row_a['m']})",
                               row_a.get("pipeline_s"), ours.get("described"), rec, row_a.get("pipeline_is_bound")))
    m, dx, dh = cfg["smooth_extra"]
    extra = [("planted kinks, M = 8 (dh=1, dx=16, m=200)", common.kink_instance(8)),
             ("planted kinks, M = 16 (dh=1, dx=16, m=200)", common.kink_instance(16)),
             (f"planted smooth minimum (m={m}, dx={dx}, dh={dh})", common.stationary_instance(m, dx, dh))]
    for i, (label, inst) in enumerate(extra):
        spec = {"data": save_data(inst["X"], inst["Y"], work / f"c_extra{i}_data.npz"),
                "net": save_net(inst["net"], work / f"c_extra{i}.npz"),
                "stages": [{"stage": "check"}, smooth_stage]}
        rec = common.run_probe(spec, work, f"c_extra{i}", timeout=cfg["smooth_limit"] + 120)
        ours = rec.get("check", {})
        rows.append(_compare_c(label, ours.get("seconds"), ours.get("described"), rec))
    for r in rows:
        log(f"(c) {r['case']}: sospcheck {r['ours_s'] or float('nan'):.3g} s ({r['ours_verdict']}) vs smooth "
            f"{r['smooth_s'] or float('nan'):.3g} s ({r['smooth_verdict']}); ratio {r['ratio_kind']} "
            f"{r['ratio'] or float('nan'):.3g}; disagree: {r['disagree']}")
    return {"rows": rows, "arpack_tol": 1e-9}


def _compare_c(case: str, ours_s, ours_verdict, rec: dict, ours_is_bound: bool = False) -> dict:
    """One row of (c): times, verdicts, the ratio sospcheck / smooth (``ratio_kind``: "=", ">" when only
    sospcheck was cut at its limit, "<" when only the smooth test was, "?" when both were)."""
    sm = rec.get("smooth", {})
    smooth_s = sm.get("seconds")
    smooth_cut = "interrupted" in sm
    kinds = {(False, False): "=", (True, False): ">", (False, True): "<", (True, True): "?"}
    ratio_kind = kinds[(bool(ours_is_bound), smooth_cut)]
    says_min = sm.get("verdict") == "minimum"
    ours_min = ours_verdict is not None and ours_verdict.split()[0] in ("local_minimum", "sosp")
    return {"case": case, "ours_s": ours_s, "ours_is_bound": bool(ours_is_bound), "ours_verdict": ours_verdict,
            "smooth_s": smooth_s, "smooth_cut": smooth_cut,
            "smooth_verdict": sm.get("verdict", sm.get("interrupted", rec.get("error", sm.get("skipped")))),
            "smooth": sm, "ratio": (ours_s / smooth_s) if ours_s and smooth_s else None, "ratio_kind": ratio_kind,
            "disagree": None if "verdict" not in sm or ours_verdict is None else bool(says_min != ours_min),
            "error": rec.get("error")}


# ---------------------------------------------------------------------------------------------- (d)

def section_d(cfg: dict, work: Path, results: dict) -> dict:
    """Planted exactly stationary points (M = 0, dy = 1): the full check runs every phase. One series per
    axis around ``d_base`` with ``solver="auto"`` (dense here), and matrix-free series in ``m`` and ``dx``."""
    m0, dx0, dh0 = cfg["d_base"]
    grid = ([("m", m, dx0, dh0, "auto") for m in cfg["d_m"]] + [("dx", m0, dx, dh0, "auto") for dx in cfg["d_dx"]]
            + [("dh", m0, dx0, dh, "auto") for dh in cfg["d_dh"]]
            + [("m (matrix-free)", m, 20, 5, "matrix_free") for m in cfg["d_mf_m"]]
            + [("dx (matrix-free)", cfg["d_mf_m"][0], dx, 5, "matrix_free") for dx in cfg["d_mf_dx"]])
    rows = []
    for axis, m, dx, dh, solver in grid:
        inst = common.stationary_instance(m, dx, dh)
        name = f"d_{m}_{dx}_{dh}_{solver}"
        check_stage = {"stage": "check", "solver": solver}
        spec = {"data": save_data(inst["X"], inst["Y"], work / f"{name}_data.npz"),
                "net": save_net(inst["net"], work / f"{name}.npz"),
                "stages": [{"stage": "gradient"}, {**check_stage, "label": "check1"}, {**check_stage, "label": "check2"}]}
        rec = common.run_probe(spec, work, name, timeout=cfg["d_limit"])
        runs = [rec[k] for k in ("check1", "check2") if k in rec]
        row = {"axis": axis, "m": m, "dx": dx, "dh": dh, "solver": solver, "error": rec.get("error"),
               "grad_s": rec.get("gradient", {}).get("seconds"), "X_bytes": rec.get("data", {}).get("X_bytes"),
               "rss_start": rec.get("start", {}).get("rss"),
               "rss_peak": max((r["rss_peak"] for r in runs), default=None)}
        if runs:
            best = min(runs, key=lambda r: r["seconds"])
            row.update(check_s=best["seconds"], verdict=best["described"], products=best["products_counted"],
                       n_params_reduced=best["n_params_reduced"], timings=best["timings"])
        rows.append(row)
        log(f"(d) {axis}: m={m} dx={dx} dh={dh} {solver}: {row.get('check_s', float('nan')):.3f} s "
            f"({row.get('verdict')}, {row.get('products')} products){' ' + row['error'] if row['error'] else ''}")
    return {"rows": rows, "base": cfg["d_base"]}


# ---------------------------------------------------------------------------------------------- (e)

def section_e(cfg: dict, work: Path, results: dict) -> dict:
    """Peak RSS of the child processes of (a) and (d) relative to |X|, and the MNIST-size run."""
    mem = []
    for row in results.get("a", {}).get("rows", []):
        rec = row["probe"]
        mem.append(_memory_row(f"(a) dx={row['dx']} dh={row['dh']} m={row['m']}", rec,
                               ["check", "second_order", "second_order_mf"]))
    for row in results.get("d", {}).get("rows", []):
        if row["axis"] == "m" and row.get("rss_peak"):
            start, xb = row["rss_start"], row["X_bytes"]
            mem.append({"case": f"(d) m={row['m']} dx={row['dx']} dh={row['dh']} (full check)", "X_bytes": xb,
                        "peaks": {"check": (row["rss_peak"] - start) / xb}})
    mnist = mnist_run(cfg["mnist_m"], work, cfg["mnist_limit"])
    return {"memory": mem, "mnist": mnist}


def _memory_row(case: str, rec: dict, stages: list[str]) -> dict:
    """(peak resident set of each stage - resident set before the data were made) / |X|."""
    start, xb = rec.get("start", {}).get("rss"), rec.get("data", {}).get("X_bytes")
    peaks = {s: (rec[s]["rss_peak"] - start) / xb for s in stages if s in rec and start and xb}
    return {"case": case, "X_bytes": xb, "peaks": peaks}


def mnist_run(m: int, work: Path, limit: float, backend: str = "numpy") -> dict:
    """m x 784 Gaussian inputs, dh = 1000, dy = 10: a random point with its output layer refit; the check
    (stops at first order), the first-order pieces, 3 Hessian-vector products, and the matrix-free
    second-order phase forced on the point, interrupted after ``limit`` seconds."""
    dx, dh, dy = 784, 1000, 10
    net = common.random_net(dx, dh, dy, seed=0)
    spec = {"data": {"m": m, "dx": dx, "dy": dy, "seed": 0}, "net": save_net(net, work / "mnist.npz"),
            "stages": [{"stage": "refit"}, {"stage": "gradient"}, {"stage": "check", "backend": backend},
                       {"stage": "pieces", "backend": backend},
                       {"stage": "hvp", "n": 3, "backend": backend},
                       {"stage": "second_order", "solver": "matrix_free", "backend": backend, "time_limit": int(limit)}]}
    log(f"(e) MNIST-size run, m = {m} (second-order phase capped at {limit:.0f} s) ...")
    rec = common.run_probe(spec, work, "mnist", timeout=limit + 900)
    out = {"m": m, "dx": dx, "dh": dh, "dy": dy, "p": net.n_params, "backend": backend, "probe": rec,
           "scale_to_60000": 60000 / m}
    log(f"(e) MNIST-size: {json.dumps({k: v.get('seconds') for k, v in rec.items() if isinstance(v, dict)})}")
    return out


# ---------------------------------------------------------------------------------------------- main

SECTIONS = {"a": section_a, "b": section_b, "c": section_c, "d": section_d, "e": section_e}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the default: about 3-4 minutes on one core")
    mode.add_argument("--full", action="store_true",
                      help="larger grids, longer training, m = 60000 for MNIST: about 20 minutes, 5 GB peak")
    ap.add_argument("--only", default="a,b,c,d,e", help="comma-separated subset of a,b,c,d,e")
    args = ap.parse_args(argv)
    mode_name = "full" if args.full else "quick"
    cfg = CONFIG[mode_name]
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s) {sorted(unknown)}")
    store = HERE / "results.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    results["machine"] = common.machine_info()
    command = "$ .venv/bin/python benchmarks/run.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sospcheck-bench-") as tmp:
        for s in sorted(only):  # c and e read a (and d): alphabetical order runs them after it
            log(f"== section ({s}), {mode_name} mode")
            t0, load0 = time.perf_counter(), os.getloadavg()[0]
            out = SECTIONS[s](cfg, Path(tmp), {k: v.get("data", {}) for k, v in results.items() if k in SECTIONS})
            results[s] = {"data": out, "mode": mode_name, "command": command, "wall_s": time.perf_counter() - t0,
                          "date": results["machine"]["date"], "load": [load0, os.getloadavg()[0]]}
            store.write_text(json.dumps(results, indent=1, default=str))
    log(f"total wall time {time.perf_counter() - t_all:.0f} s")
    report.write(results, HERE)
    log(f"wrote {HERE / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
