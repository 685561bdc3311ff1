"""Table 1 in the paper's format, ours beside the paper's: markdown, CSV and a plot.

Per setting and per counting method (the paper's thresholds on raw weights; the sospcheck check
after snap): ``Sum M (Avg)``, ``Sum L (Avg)``, ``Sum K (Avg)``, ``P{L > 0}``, plus the verdict
distribution, timings and snap distances; and nearby mode: the verdicts at ``z*`` (or why none was
found), its relative distance, ``R(z*) - R(z)`` and the Newton steps. Only ``status: "ok"`` records
count; errors are listed.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path

import numpy as np

from .presets import PAPER_TABLE1, Preset

__all__ = ["aggregate", "markdown_report", "write_report", "VERDICTS"]

VERDICTS = ("local_minimum", "sosp", "descent", "inconclusive")


def _dig(record: dict, path: tuple):
    """``record[path[0]][path[1]]...``, or None where a level is missing."""
    d = record
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
    return d


def _counts(recs: list, path: tuple) -> dict:
    vals = [d for d in (_dig(r, path) for r in recs) if d is not None]
    n = len(vals)
    out = {"n": n}
    for q in ("M", "L", "K"):
        v = np.array([d[q] for d in vals], dtype=float)
        out[f"sum_{q}"] = float(v.sum()) if n else float("nan")
        out[f"avg_{q}"] = float(v.mean()) if n else float("nan")
    out["p_L"] = float(np.mean([d["L"] > 0 for d in vals])) if n else float("nan")
    return out


def _verdicts(recs: list, key: str) -> dict:
    c = Counter()
    for r in recs:
        ch = r.get(key)
        if not ch:
            continue
        v = ch["verdict"]
        if v is None:  # nearby mode found no stationary point: the status says why
            c[f"none ({ch['status']})"] += 1
            continue
        c[f"descent{ch['descent_order']}" if v == "descent" and ch.get("descent_order") else v] += 1
    return dict(c)


def _values(recs: list, path: tuple) -> list[float]:
    return [float(d) for d in (_dig(r, path) for r in recs) if isinstance(d, (int, float)) and not isinstance(d, bool)]


def _median(recs: list, path: tuple) -> float:
    vals = _values(recs, path)
    return float(np.median(vals)) if vals else float("nan")


def _max(recs: list, path: tuple) -> float:
    vals = _values(recs, path)
    return float(np.max(vals)) if vals else float("nan")


def aggregate(records: list, preset: Preset) -> list[dict]:
    """One row per setting of ``preset`` (in its order) with every number of the report."""
    rows = []
    for s in preset.settings:
        mine = [r for r in records if r.get("setting") == s.__dict__]
        if not mine:
            continue
        ok = [r for r in mine if r.get("status") == "ok"]
        paper = PAPER_TABLE1.get(s) if preset.variant == "relu" else None
        rows.append({
            "setting": s, "runs": len(ok), "errors": len(mine) - len(ok),
            "paper": paper, "est": _counts(ok, ("estimates",)), "check": _counts(ok, ("check",)),
            "relaxed": _counts(ok, ("check_relaxed",)),
            "verdicts": _verdicts(ok, "check"), "verdicts_relaxed": _verdicts(ok, "check_relaxed"),
            "verdicts_nearby": _verdicts(ok, "check_nearby"),
            "nearby_runs": sum(bool(r.get("check_nearby")) for r in ok),
            "median_nearby_rel_distance": _median(ok, ("check_nearby", "relative_rescaled_distance")),
            "max_nearby_rel_distance": _max(ok, ("check_nearby", "relative_rescaled_distance")),
            "median_nearby_loss_change": _median(ok, ("check_nearby", "loss_change")),
            "median_nearby_steps": _median(ok, ("check_nearby", "steps")),
            "median_nearby_s": _median(ok, ("check_nearby", "seconds")),
            "median_check_s": _median(ok, ("check", "seconds")),
            "median_train_s_per_iter": _median(ok, ("train", "seconds_per_iter")),
            "median_snap_dZ": _median(ok, ("check", "snap", "dZ_norm")),
            "median_clarke_rel": _median(ok, ("check", "clarke_rel")),
            "mean_loss": float(np.mean([r["check"]["snap"]["loss_before"] for r in ok])) if ok else float("nan"),
            "error_messages": sorted({r.get("error", "")[:120] for r in mine if r.get("status") != "ok"}),
        })
    return rows


def _sa(total: float, avg: float, digits: int = 3) -> str:
    if not np.isfinite(avg):
        return "-"
    return f"{total:g} ({avg:.{digits}g})"


def _verdict_text(v: dict) -> str:
    order = ["local_minimum", "sosp", "descent1", "descent2", "descent", "inconclusive"]
    order += sorted(k for k in v if k.startswith("none"))
    return ", ".join(f"{k} {v[k]}" for k in order if v.get(k)) or "-"


def markdown_report(rows: list, preset: Preset, title: str | None = None) -> str:
    """The side-by-side table, the verdict distribution and the run details, as markdown."""
    out = io.StringIO()
    w = out.write
    w(f"### {title or 'Table 1'}: preset `{preset.name}`\n\n{preset.description}.\n\n")
    w("M, L, K per method: **paper** = the paper's Table 1 (40 runs, 200,000 Adam steps); **thr.** = the paper's "
      "thresholds (|N_ik| < 1e-5, s*_i at a bound, |a_ik| < 1e-4) on our raw trained weights; **check** = "
      "sospcheck after snap. Cells: Sum (Avg per run).\n\n")
    w("| (dx, dh, m) | runs | Sum M (Avg): paper | thr. | check | Sum L (Avg): paper | thr. | check "
      "| Sum K (Avg): paper | thr. | check | P{L>0}: paper | thr. | check |\n")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        p, e, c = r["paper"], r["est"], r["check"]
        cells = [r["setting"].label, f"{r['runs']}" + (f" (+{r['errors']} err)" if r["errors"] else "")]
        for q in ("M", "L", "K"):
            cells.append(_sa(p["runs"] * p[f"avg_{q}"], p[f"avg_{q}"], 4) if p else "-")
            cells.append(_sa(e[f"sum_{q}"], e[f"avg_{q}"]))
            cells.append(_sa(c[f"sum_{q}"], c[f"avg_{q}"]))
        cells += [f"{p['p_L']:.3g}" if p else "-", _fmt(e["p_L"]), _fmt(c["p_L"])]
        w("| " + " | ".join(cells) + " |\n")
    w("\nVerdicts of the check (descentN = descent of order N), and with the gradient tolerance relaxed to "
      "1e-5 (relative; default 1e-7); median relative Clarke residual `max_k |vt_k| / scale_k`; median check "
      "time; median snap distance |dZ|; mean training loss (objective at the raw weights); median training time "
      "per Adam step:\n\n")
    w("| (dx, dh, m) | verdicts (check) | verdicts (relaxed) | Clarke residual | check s | snap dZ | loss "
      "| s/step |\n|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        w(f"| {r['setting'].label} | {_verdict_text(r['verdicts'])} | {_verdict_text(r['verdicts_relaxed'])} "
          f"| {_fmt(r['median_clarke_rel'])} | {_fmt(r['median_check_s'])} | {_fmt(r['median_snap_dZ'])} "
          f"| {_fmt(r['mean_loss'], 5)} | {_fmt(r['median_train_s_per_iter'])} |\n")
    if any(r["nearby_runs"] for r in rows):
        w("\nNearby mode (`check(..., snap=True, nearby=True)`): the verdict at z*, the exact stationary point next to "
          "the raw weights, checked with tolerances near rounding (none: no stationary point within nearby_radius "
          "1e-3, with the reason); the relative distance |z* - z| / |z| (modulo rescaling the neurons, which changes "
          "nothing without weight decay), median and max; the median R(z*) - R(z) (below rounding), Newton steps "
          "and nearby-mode time:\n\n")
        w("| (dx, dh, m) | verdicts at z* | rel. distance median | max | R(z*) - R(z) median | Newton steps "
          "| nearby s |\n|---|---|---|---|---|---|---|\n")
        for r in rows:
            w(f"| {r['setting'].label} | {_verdict_text(r['verdicts_nearby'])} | {_fmt(r['median_nearby_rel_distance'])} "
              f"| {_fmt(r['max_nearby_rel_distance'])} | {_fmt(r['median_nearby_loss_change'])} "
              f"| {_fmt(r['median_nearby_steps'])} | {_fmt(r['median_nearby_s'])} |\n")
    errs = [(r["setting"].label, m) for r in rows for m in r["error_messages"]]
    if errs:
        w("\nFailed runs (recorded, retried by the next run of the sweep):\n\n")
        for label, m in errs:
            w(f"- {label}: `{m}`\n")
    return out.getvalue()


def _fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if isinstance(x, (int, float)) and np.isfinite(x) else "-"


def csv_rows(rows: list) -> list[dict]:
    """Flat per-setting rows for ``table1.csv``."""
    flat = []
    for r in rows:
        d = {"dx": r["setting"].dx, "dh": r["setting"].dh, "m": r["setting"].m, "runs": r["runs"],
             "errors": r["errors"]}
        for src in ("paper", "est", "check", "relaxed"):
            vals = r[src] or {}
            for q in ("M", "L", "K"):
                if src == "paper":
                    d[f"paper_sum_{q}"] = vals[f"avg_{q}"] * vals["runs"] if vals else ""
                    d[f"paper_avg_{q}"] = vals.get(f"avg_{q}", "")
                else:
                    d[f"{src}_sum_{q}"], d[f"{src}_avg_{q}"] = vals[f"sum_{q}"], vals[f"avg_{q}"]
            d[f"{src}_p_L"] = vals.get("p_L", "")
        for v in ("local_minimum", "sosp", "descent1", "descent2", "inconclusive"):
            d[f"verdict_{v}"] = r["verdicts"].get(v, 0)
            d[f"relaxed_verdict_{v}"] = r["verdicts_relaxed"].get(v, 0)
            d[f"nearby_verdict_{v}"] = r["verdicts_nearby"].get(v, 0)
        d["nearby_none"] = sum(n for k, n in r["verdicts_nearby"].items() if k.startswith("none"))
        for k in ("median_check_s", "median_train_s_per_iter", "median_snap_dZ", "median_clarke_rel", "mean_loss",
                  "median_nearby_rel_distance", "max_nearby_rel_distance", "median_nearby_loss_change",
                  "median_nearby_steps", "median_nearby_s"):
            d[k] = r[k]
        flat.append(d)
    return flat


def run_rows(records: list) -> list[dict]:
    """One flat row per run for ``runs.csv``."""
    out = []
    for r in records:
        s = r.get("setting", {})
        d = {"dx": s.get("dx"), "dh": s.get("dh"), "m": s.get("m"), "seed": r.get("seed"), "status": r.get("status"),
             "error": r.get("error", "")}
        if r.get("status") == "ok":
            e, c, x, t = r["estimates"], r["check"], r.get("check_relaxed") or {}, r["train"]
            d |= {"thr_M": e["M"], "thr_L": e["L"], "thr_K": e["K"], "thr_qp_rel": e["qp_relative_max"],
                  "M": c["M"], "L": c["L"], "K": c["K"], "verdict": c["verdict"], "descent_order": c["descent_order"],
                  "descent_test": c["descent_test"], "descent_decrease": c["descent_decrease"],
                  "clarke_rel": c["clarke_rel"], "loss": c["snap"]["loss_before"],
                  "loss_after_snap": c["snap"]["loss_after"], "snap_pairs": c["snap"]["n_pairs"],
                  "snap_dZ": c["snap"]["dZ_norm"], "snap_dW2": c["snap"]["dW2_norm"], "check_s": c["seconds"],
                  "relaxed_verdict": x.get("verdict"), "relaxed_order": x.get("descent_order"),
                  **_nearby_columns(r.get("check_nearby")),
                  "relaxed_L": x.get("L"), "relaxed_K": x.get("K"),
                  "train_objective": t["objective"], "train_grad_norm": t["grad_norm"], "train_s": t["seconds"],
                  "device": t["device"], "batch": t["batch"]}
        out.append(d)
    return out


def _nearby_columns(nb: dict | None) -> dict:
    """A run's nearby-mode columns for ``runs.csv`` (empty before record version 2)."""
    if not nb:
        return {}
    return {"nearby_status": nb["status"], "nearby_verdict": nb["verdict"], "nearby_order": nb["descent_order"],
            "nearby_rel_distance": nb["relative_rescaled_distance"], "nearby_loss_change": nb["loss_change"],
            "nearby_steps": nb["steps"], "nearby_residual": nb["residual"], "nearby_added": nb["added"],
            "nearby_s": nb["seconds"]}


def _write_csv(path: Path, rows: list) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=keys)
        wr.writeheader()
        wr.writerows(rows)


def plot(rows: list, preset: Preset, path: Path) -> bool:
    """Avg M per run (paper / thresholds / check, log scale) and the verdict shares; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    labels = [r["setting"].label for r in rows]
    x = np.arange(len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    series = [("paper", [r["paper"]["avg_M"] if r["paper"] else np.nan for r in rows]),
              ("thresholds", [r["est"]["avg_M"] for r in rows]), ("check", [r["check"]["avg_M"] for r in rows])]
    for j, (name, vals) in enumerate(series):
        ax1.bar(x + (j - 1) * 0.27, vals, 0.27, label=name)
    ax1.set_yscale("log")
    ax1.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax1.set_ylabel("avg M per run")
    ax1.set_title(f"kink pairs per run ({preset.name})")
    ax1.legend(fontsize=8)
    bottom = np.zeros(len(rows))
    for v in ("local_minimum", "sosp", "descent1", "descent2", "inconclusive"):
        share = np.array([r["verdicts"].get(v, 0) / max(r["runs"], 1) for r in rows])
        ax2.bar(x, share, 0.6, bottom=bottom, label=v)
        bottom += share
    ax2.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("share of runs")
    ax2.set_title("sospcheck verdicts (after snap)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(store, preset: Preset | None = None) -> dict:
    """Write ``table1.md``, ``table1.csv``, ``runs.csv`` and ``table1.png`` into the store's folder."""
    preset = preset or store.preset()
    records = store.records()
    rows = aggregate(records, preset)
    root = Path(store.root)
    md = markdown_report(rows, preset)
    (root / "table1.md").write_text(md)
    _write_csv(root / "table1.csv", csv_rows(rows))
    _write_csv(root / "runs.csv", run_rows(records))
    plotted = plot(rows, preset, root / "table1.png")
    return {"markdown": md, "rows": rows, "plot": plotted, "files": [str(root / f) for f in (
        "table1.md", "table1.csv", "runs.csv") + (("table1.png",) if plotted else ())]}
