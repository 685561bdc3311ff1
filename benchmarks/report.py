"""Render ``results.json`` (written by ``run.py``) to ``RESULTS.md`` and the PNG plots.

The hand-written reading of the numbers lives in ``ANALYSIS.md`` (kept across runs) and is appended.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def wall_cpu(rec: dict, key: str = "seconds") -> str:
    """``wall s`` plus the stage's CPU time where the probe recorded it (runs made after that was added)."""
    cpu = rec.get("stage_cpu_s")
    return f"{fmt(rec.get(key))} s" + (f" (CPU {fmt(cpu)} s)" if cpu is not None else "")


def fmt(v, spec: str = ".3g", missing: str = "-") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return missing
    return format(v, spec)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def section_header(results: dict, key: str, title: str) -> list[str]:
    meta = results[key]
    load = (f", 1-min load average {meta['load'][0]:.1f} -> {meta['load'][1]:.1f} on "
            f"{results['machine']['cores']} cores") if meta.get("load") else ""
    return [f"## ({key}) {title}", "",
            f"`{meta['command']}` ({meta['mode']} mode, {meta['date']}, section wall time {meta['wall_s']:.0f} s{load})", ""]


# ------------------------------------------------------------------------------------------- sections

def render_a(results: dict) -> list[str]:
    d = results["a"]["data"]
    out = section_header(results, "a", "full check time / one full-batch gradient, at trained points")
    out += [f"Data x_i, y_i iid N(0, 1), dy = 1, squared loss (sum). Trained by full-batch Adam (float64), "
            f"{d['adam_iters']} iterations, lr 1e-3 decayed geometrically to 1e-5; then `check(net, X, Y, snap=True, "
            "fragility=False)`. The gradient is one NumPy forward+backward of the same loss on the same data "
            "(best of >= 5). *check* is the wall time of the whole call (snap included); it stops at the first "
            "failing test. *forced 2nd order* is `second_order_test` run directly on the snapped point with the "
            "pieces built as in `check._analyze` (the cost as if first order had passed); *benign total* = check "
            "+ forced 2nd order.", ""]
    rows = []
    for r in d["rows"]:
        p = r["probe"]
        ch, g = p.get("check", {}), p.get("gradient", {}).get("seconds")
        so_txt = "; ".join(f"{label}{forced_phase(p[key])}" for key, label in
                           (("second_order", ""), ("second_order_mf", "matrix-free: ")) if key in p) or p.get("error", "-")
        bound = ">" if r.get("pipeline_is_bound") else ""
        rows.append([f"({r['dx']}, {r['dh']}, {r['m']})", fmt(r["train"]["loss"], ".4g"),
                     f"{fmt(g * 1e3 if g else None)} ms", wall_cpu(ch), ch.get("described", "-"),
                     f"{ch.get('M', '-')} / {p.get('second_order', {}).get('L', '-')}",
                     f"**{fmt(r.get('check_over_grad'), '.0f')}x**",
                     so_txt, f"**{bound}{fmt(r.get('pipeline_over_grad'), '.0f')}x**"])
    out += [table(["(dx, dh, m)", "train loss", "gradient", "check", "verdict", "M / L (snapped point)",
                   "check / grad", "forced 2nd order", "benign total / grad"], rows), ""]
    last = d["rows"][-1] if d["rows"] else {}
    bound = ">" if last.get("pipeline_is_bound") else ""
    out += [f"Target: <= 50x at (1000, 10, 10000) in the benign case. Measured: "
            f"{bound}{fmt(last.get('pipeline_over_grad'), '.0f')}x "
            f"(check as run: {fmt(last.get('check_over_grad'), '.0f')}x).", ""]
    out += ["Phase timings of the check (seconds, from `result.timings`; the near-zero probe and result assembly "
            "are outside them):", ""]
    phases = ("snap", "forward", "first_order", "second_order", "verify")
    out += [table(["(dx, dh, m)", *phases],
                  [[f"({r['dx']}, {r['dh']}, {r['m']})"]
                   + [fmt(r["probe"].get("check", {}).get("timings", {}).get(k)) for k in phases]
                   for r in d["rows"]]), ""]
    return out


def forced_phase(so: dict) -> str:
    """One forced second-order record in words."""
    if "interrupted" in so:
        return f"{so['interrupted']} after {so.get('products_counted')} Hessian products, no verdict"
    return (f"{fmt(so.get('second_order_s'))} s, {so.get('solver')}, {so.get('outcome')}, "
            f"{so.get('products_counted')} products, n = {so.get('n_params_reduced')}")


def render_b(results: dict, here: Path) -> list[str]:
    d = results["b"]["data"]
    out = section_header(results, "b", "against naive enumeration of the 2^M sign regions")
    out += [f"Instances ({d['instance']}): M data points projected onto the neuron's hyperplane, Clarke multipliers "
            "s_i in (0.2, 0.8), residuals planted in the null space of the stationarity equations with w r_i > 0 on "
            "the kinks, Y = yhat - r. So the point is exactly first-order stationary with interior multipliers, "
            "L = 0, and `check` runs every phase (one ECQP). *check* = `check(..., fragility=False)` (best of 5); "
            "*default* = with the fragility re-runs (x3). Naive = per region: slope pattern, the piece's gradient "
            "and dense Hessian (`HessianOperator.dense()`), an LP (`linprog`, HiGHS) for the first-order slope over "
            "the region's cone, and `eigvalsh` of the Hessian. *min LP* is the most negative first-order slope the "
            "naive method found over all regions (0 up to rounding confirms stationarity independently).", ""]
    rows = []
    for r in d["rows"]:
        nv = r.get("naive", {})
        rows.append([r["M"], f"{r['stats_M']} / {r['L']} / {r['K']}", r["verdict"], fmt(r["bvls_residual"], ".1e"),
                     f"{r['check_s'] * 1e3:.2f} ms", f"{r['check_default_s'] * 1e3:.2f} ms",
                     f"{fmt(r.get('naive_s'))} s ({r.get('naive_kind', '-')})", fmt(nv.get("min_lp"), ".1e"),
                     f"**{fmt(r.get('ratio'), '.3g')}x**"])
    out += [table(["M", "M / L / K (check)", "verdict", "BVLS residual", "check", "check (default)", "naive",
                   "naive min LP", "naive / check"], rows), ""]
    last = d["rows"][-1] if d["rows"] else {}
    per_region_ms = d["per_region_s"] * 1e3 if d["per_region_s"] else None
    out += [f"Per-region cost of the naive method (largest complete enumeration): {fmt(per_region_ms)} ms. "
            f"Target: >= 1000x at M = 16. Measured: {fmt(last.get('ratio'), '.3g')}x "
            f"({last.get('naive_kind', '-')} naive time).", "", "![(b)](b_enumeration.png)", ""]
    plot_b(d, here / "b_enumeration.png")
    return out


def render_c(results: dict) -> list[str]:
    d = results["c"]["data"]
    out = section_header(results, "c", "against the smooth autograd test")
    if "skipped" in d:
        return out + [f"Skipped: {d['skipped']}.", ""]
    out += ["Smooth test = what practitioners run (PyHessian approach): autograd gradient and the minimum Hessian "
            "eigenvalue by Lanczos on Hessian-vector products, `torch.func.jvp(torch.func.grad(R))`, float64, "
            "through `scipy.sparse.linalg.eigsh` on a `LinearOperator` (|H| with tol 1e-3, then `which='SA'` with "
            f"ARPACK tol {d['arpack_tol']:g}). It says *minimum* iff |grad| <= 1e-7 scale and lambda_min >= -1e-9 |H| "
            "(sospcheck's default relative tolerances). *sospcheck* is the full check: for the trained points the "
            "benign total of (a) (check + forced second order), for the planted points one `check` call.", ""]
    rows = []
    for r in d["rows"]:
        sm = r.get("smooth") or {}
        if "interrupted" in sm:
            smooth = f"> {fmt(r['smooth_s'])} s ({sm['interrupted']})"
        elif r["smooth_s"]:
            smooth = (f"{fmt(r['smooth_s'])} s ({sm.get('products')} HVPs, lambda_min {fmt(sm.get('min_eig'))}, "
                      f"grad norm/scale {fmt(sm.get('grad_rel'), '.1e')}{'' if sm.get('converged', True) else ', NOT converged'})")
        else:
            smooth = r.get("error") or "-"
        kind = {"=": "", ">": ">", "<": "<", "?": "?"}[r.get("ratio_kind", "=")]
        rows.append([r["case"], f"{'>' if r.get('ours_is_bound') else ''}{fmt(r['ours_s'])} s", r["ours_verdict"], smooth,
                     r["smooth_verdict"] if "verdict" in sm else "-", f"**{kind}{fmt(r['ratio'], '.3g')}x**",
                     "**yes**" if r["disagree"] else ("no" if r["disagree"] is False else "-")])
    out += [table(["point", "sospcheck", "sospcheck verdict", "smooth test", "smooth verdict", "sospcheck / smooth",
                   "disagree"], rows), ""]
    return out


def decided(row: dict) -> bool:
    """A (d) point that produced a verdict (inconclusive runs are shown but not fitted)."""
    return bool(row.get("check_s")) and not str(row.get("verdict", "")).startswith("inconclusive")


def fit_exponents(rows: list[dict]) -> dict:
    """Least-squares slope of log(check time) against log(size) per axis, over the decided points."""
    fits = {}
    for axis in dict.fromkeys(r["axis"] for r in rows):
        key = axis.split()[0]
        pts = [(r[key], r["check_s"]) for r in rows if r["axis"] == axis and decided(r)]
        if len(pts) >= 2:
            slope, intercept = np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)
            fits[axis] = {"exponent": float(slope), "intercept": float(intercept), "n": len(pts)}
    return fits


def render_d(results: dict, here: Path) -> list[str]:
    d = dict(results["d"]["data"])
    d["fits"] = fit_exponents(d["rows"])
    out = section_header(results, "d", "scaling in m, dx, dh")
    out += [f"Planted exactly stationary points (random ReLU net, no data on kinks, residuals orthogonal to every "
            f"gradient column, dy = 1): `check(..., fragility=False)` runs every phase and certifies a minimum. "
            f"Each axis varies around (m, dx, dh) = {tuple(d['base'])} with `solver='auto'` (dense here); the "
            "matrix-free series vary m at (dx, dh) = (20, 5) and dx at the smallest m, dh = 5. Best of two runs. "
            "Exponents: least squares on "
            "log-log over the points with a verdict (an inconclusive run is listed but not fitted).", ""]
    out += [table(["axis", "exponent", "points"],
                  [[a, f"**{f['exponent']:.2f}**", f["n"]] for a, f in d["fits"].items()]), ""]
    def ratio(r):
        return r["check_s"] / r["grad_s"] if r.get("check_s") and r.get("grad_s") else None

    rows = [[r["axis"], r["m"], r["dx"], r["dh"], r.get("n_params_reduced", "-"), fmt(r.get("check_s")),
             fmt(r["grad_s"] * 1e3 if r.get("grad_s") else None), fmt(ratio(r), ".0f"),
             r.get("products", "-"), r.get("verdict") or r.get("error")] for r in d["rows"]]
    out += [table(["axis", "m", "dx", "dh", "n (reduced)", "check (s)", "gradient (ms)", "check / grad",
                   "Hessian products", "verdict"], rows), "", "![(d)](d_scaling.png)", ""]
    plot_d(d, here / "d_scaling.png")
    return out


def render_e(results: dict) -> list[str]:
    d = results["e"]["data"]
    out = section_header(results, "e", "peak memory and the MNIST-size run")
    out += ["Peak memory: each case ran in its own process; the number is (peak resident set during the stage - "
            "resident set of the interpreter with NumPy/SciPy/sospcheck imported, before the data) / |X| (bytes of "
            "the float64 X), in parentheses the same peak in MiB. It includes X and Y themselves (1x). Target: <= 3x. "
            "For small X the fixed buffers (chunked Hessian products, up to 2^24 floats per intermediate) dominate.", ""]
    rows = [[r["case"], f"{r['X_bytes'] / 2**20:.1f} MiB" if r["X_bytes"] else "-"]
            + [(f"{r['peaks'][s]:.2f}x ({r['peaks'][s] * r['X_bytes'] / 2**20:.0f} MiB)" if s in r["peaks"] else "-")
               for s in ("check", "second_order", "second_order_mf")] for r in d["memory"]]
    out += [table(["case", "size of X", "check", "forced 2nd order (auto)", "forced 2nd order (matrix-free)"], rows), ""]
    out += render_mnist(d["mnist"])
    return out


def render_mnist(mn: dict) -> list[str]:
    p = mn["probe"]
    scale = mn["scale_to_60000"]
    lines = [f"### MNIST-size: m = {mn['m']}, dx = {mn['dx']}, dh = {mn['dh']}, dy = {mn['dy']} (p = {mn['p']})", ""]
    if scale != 1:
        lines += [f"**Scaled down**: m = {mn['m']} instead of 60000 (quick mode). Every phase below is one or more "
                  f"passes over the data, linear in m; the column *x{scale:g}* multiplies by 60000/m "
                  "(extrapolated, not measured).", ""]
    lines += ["Synthetic Gaussian data of that shape, random hidden layer, output layer refit by least squares. "
              "The check stops at first order (a random hidden layer is not stationary). The second-order phase is "
              "then forced on the point (matrix-free, the solver `auto` picks at this size) and stopped at its time "
              "limit if it has not finished.", ""]
    rows = []
    xb = p.get("data", {}).get("X_bytes")
    start = p.get("start", {}).get("rss")
    for stage, what in (("refit", "output-layer refit (setup, not part of the check)"),
                        ("gradient", "one full-batch gradient"), ("check", "check (stops at first order)"),
                        ("pieces", "forward + first-order pieces"), ("hvp", "3 Hessian-vector products"),
                        ("second_order", "forced second-order phase (matrix-free)")):
        rec = p.get(stage)
        if rec is None:
            continue
        sec = rec.get("seconds")
        note = ""
        if stage == "hvp":
            note = f"{fmt(rec.get('per_product_s'))} s per product; data-span SVD {fmt(rec.get('data_span_s'))} s"
        if stage == "check":
            note = rec.get("described", "")
        if stage == "second_order":
            note = (rec.get("interrupted") or f"{rec.get('outcome')}") + f"; {rec.get('products_counted')} products"
        mem = f"{(rec['rss_peak'] - start) / xb:.2f}x ({(rec['rss_peak'] - start) / 2**20:.0f} MiB)" if xb and start else "-"
        extra = [fmt(sec * scale if sec else None)] if scale != 1 else []
        rows.append([what, fmt(sec)] + extra + [mem, note])
    header = ["phase", "seconds"] + ([f"x{scale:g} (extrapolated)"] if scale != 1 else []) + ["peak mem / size of X", "note"]
    lines += [table(header, rows), ""]
    if p.get("error"):
        lines += [f"Child process: {p['error']}.", ""]
    return lines


# ---------------------------------------------------------------------------------------------- plots

def plot_b(d: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = d["rows"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.semilogy([r["M"] for r in rows], [r["check_s"] for r in rows], "o-", label="sospcheck check()")
    meas = [r for r in rows if r.get("naive_kind") == "measured"]
    extra = [r for r in rows if r.get("naive_kind") == "extrapolated"]
    ax.semilogy([r["M"] for r in meas], [r["naive_s"] for r in meas], "s-", label="naive 2^M regions (measured)")
    if extra:
        pts = (meas[-1:] if meas else []) + extra
        ax.semilogy([r["M"] for r in pts], [r["naive_s"] for r in pts], "s--", mfc="none",
                    label="naive (extrapolated: 2^M x per-region cost)")
    ax.set_xlabel("M (boundary pairs)")
    ax.set_ylabel("seconds")
    ax.set_title("(b) sospcheck vs enumeration of sign regions")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_d(d: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter

    axes_names = list(d["fits"])
    ncol = 3
    nrow = -(-len(axes_names) // ncol)
    fig, axs = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.5 * nrow), squeeze=False)
    for ax in axs.flat[len(axes_names):]:
        ax.set_visible(False)
    for ax, name in zip(axs.flat, axes_names):
        key = name.split()[0]
        rows = [r for r in d["rows"] if r["axis"] == name and r.get("check_s")]
        ok = [r for r in rows if decided(r)]
        bad = [r for r in rows if not decided(r)]
        x = np.array([r[key] for r in ok], float)
        f = d["fits"][name]
        ax.loglog(x, [r["check_s"] for r in ok], "o", label="check time")
        if bad:
            ax.loglog([r[key] for r in bad], [r["check_s"] for r in bad], "rx", ms=9, label="inconclusive (not fitted)")
        ax.loglog(x, np.exp(f["intercept"]) * x ** f["exponent"], "--", label=f"fit: exponent {f['exponent']:.2f}")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(x)
        ax.set_xticklabels([f"{v:g}" for v in x])
        ax.set_xlabel(key)
        ax.set_ylabel("seconds")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("(d) full check at planted stationary points")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- page

def machine_lines(m: dict) -> list[str]:
    return ["## Machine", "",
            f"- CPU: {m['cpu']}, {m['cores']} cores available (shared with other jobs: timings are best-of where "
            "repeated, single runs otherwise)",
            f"- Python {m['python']}, NumPy {m['numpy']}, SciPy {m['scipy']}, torch {m['torch'] or 'not installed'}",
            f"- BLAS: {m['blas']}", f"- sospcheck at git {m['git']} when the last run started ({m['date']})",
            f"- BLAS threads: {m.get('threads') or '1'} (see `common.py`: single-threaded for stable numbers on a "
            "shared machine)",
            ""]


def write(results: dict, here: Path) -> None:
    lines = ["# sospcheck benchmarks (issue 3)", "",
             "Generated by `benchmarks/run.py` from `benchmarks/results.json`; every ratio is between two numbers "
             "measured in the same run. Re-run: `.venv/bin/python benchmarks/run.py [--quick|--full] [--only a,b,...]` "
             "(section (c) and the memory table of (e) reuse the points of (a)/(d) from the same invocation).", ""]
    lines += machine_lines(results["machine"])
    renderers = {"a": lambda: render_a(results), "b": lambda: render_b(results, here), "c": lambda: render_c(results),
                 "d": lambda: render_d(results, here), "e": lambda: render_e(results)}
    for key in "abcde":
        if key in results:
            lines += renderers[key]()
    analysis = here / "ANALYSIS.md"
    if analysis.exists():
        lines += [analysis.read_text()]
    (here / "RESULTS.md").write_text("\n".join(lines) + "\n")
