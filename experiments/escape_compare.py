"""Vanishing initialisation, saddle-to-saddle plateaus: GD, Adam, perturbed GD and GD + sospcheck escapes.

A teacher ReLU network with three neurons of output weight 3, 1.5 and 0.7 labels m = 8 points in
2-D. A student (biases on) starts from weights of size 1e-6 and minimises ``nn.MSELoss()`` (mean)
by full-batch training, in two scenarios: "wide" (6 hidden neurons: it can interpolate, the global
minima have loss 0) and "narrow" (2 neurons: it cannot, its minima have loss > 0). Per seed (the
student's initialisation and the perturbations) each method runs for at most a fixed number of
iterations; we record the iteration and wall time at which the loss first reaches each level, the
final loss, and what the end point is: :func:`sospcheck.escape.nearby_check` (the same for every
method) says ``local_minimum``, ``sosp``, ``descent`` (not stationary) or ``inconclusive``.
GD + escapes stop by themselves on a certificate (``local_minimum`` or ``sosp``).

    python experiments/escape_compare.py          # the full comparison (about 5 minutes on one core):
        # writes the results section of experiments/ESCAPE.md, escape_loss.png, escape_results.json
    python experiments/escape_compare.py --quick --out /tmp/x   # smoke run (2 seeds, 3000 iterations)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sospcheck.escape import EscapePolicy, SaddleEscape, StallConfig, nearby_check  # noqa: E402
from sospcheck.torch import as_numpy, from_torch, torch_loss  # noqa: E402

SCENARIOS = {"wide": dict(width=6, iters=30000), "narrow": dict(width=2, iters=20000)}
LEVELS = {"wide": (5e-2, 1e-2, 1e-3, 1e-5), "narrow": (6e-2, 1e-2, 6e-3)}
LR_GD = 0.05
LR_ADAM = 1e-2
PGD_RADIUS = 0.1
INIT = 1e-6
# one stall detector for perturbed GD and for the escapes: the loss fell by < 1e-4 (relative) over
# 200 iterations and the gradient averaged over 200 iterations has norm < 1e-3
STALL = StallConfig(window=200, loss_rtol=1e-4, grad_tol=1e-3)
METHODS = ("GD", "Adam", "perturbed GD", "GD + escapes (cert. dir.)", "GD + escapes (best neuron)")
BEGIN, END = "<!-- results:begin (written by escape_compare.py) -->", "<!-- results:end -->"


def dataset() -> tuple[torch.Tensor, torch.Tensor]:
    """8 points in the plane labelled by the teacher."""
    rng = np.random.default_rng(100)
    angle = rng.uniform(0, 2 * np.pi, 8)
    X = np.c_[np.cos(angle), np.sin(angle)] * rng.uniform(0.5, 1.5, 8)[:, None]
    W = np.array([[1.0, 0.0], [-0.5, 0.866], [-0.5, -0.866]])
    Y = np.maximum(X @ W.T, 0) @ np.array([3.0, 1.5, 0.7])
    return torch.tensor(X), torch.tensor(Y[:, None])


def student(seed: int, width: int) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, 1)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(INIT * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model


def perturb(model: nn.Module, radius: float, gen: torch.Generator) -> None:
    """Add a point drawn uniformly from the ball of ``radius`` (Jin et al. 2017) to all weights."""
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    v = torch.randn(n, generator=gen, dtype=torch.float64)
    v *= radius * float(torch.rand(1, generator=gen, dtype=torch.float64)) ** (1.0 / n) / v.norm()
    with torch.no_grad():
        offset = 0
        for p in params:
            p.add_(v[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


def run(method: str, seed: int, width: int, X, Y, iters: int) -> dict:
    """Train one student; returns losses, cumulative times, events and the end-point verdict."""
    model = student(seed, width)
    criterion = nn.MSELoss()
    opt = (torch.optim.Adam(model.parameters(), lr=LR_ADAM) if method == "Adam"
           else torch.optim.SGD(model.parameters(), lr=LR_GD))
    escaper = None
    if method.startswith("GD + escapes"):
        escaper = SaddleEscape(model, X, Y, criterion, opt, stall=STALL,
                               policy=EscapePolicy(best_neuron="best neuron" in method))
    detector = STALL.detector() if method == "perturbed GD" else None
    gen = torch.Generator().manual_seed(10_000 + seed)
    losses, times, marks = [], [], []
    t0 = time.perf_counter()
    for it in range(iters):
        opt.zero_grad()
        loss = criterion(model(X), Y)
        loss.backward()
        value = float(loss.detach())
        losses.append(value)
        opt.step()
        if escaper is not None:
            escaper.step(value)
        elif detector is not None:
            grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            if detector.update(value, grad):
                perturb(model, PGD_RADIUS, gen)
                detector.reset()
                marks.append(it + 1)
        times.append(time.perf_counter() - t0)
        if value == 0.0 or not math.isfinite(value) or (escaper is not None and escaper.stopped):
            break
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        final = float(criterion(model(X), Y))
    if escaper is not None and escaper.certificate is not None:
        verdict, how, where = escaper.certificate.verdict.value, "stopped on it", final
    elif not math.isfinite(final):
        verdict, how, where = "diverged", "the loss is not finite", final
    else:
        spec = torch_loss(criterion)
        nc = nearby_check(from_torch(model), as_numpy(X, "X"), spec.targets(Y), spec.loss, spec.reduction)
        verdict, how, where = nc.result.verdict.value, "nearby check after training", nc.loss_nearby
    events = [e.to_dict() for e in escaper.events] if escaper else []
    return {"method": method, "seed": seed, "losses": losses, "times": times, "final_loss": final,
            "train_seconds": train_s, "iterations": len(losses), "verdict": verdict, "verdict_how": how,
            "verdict_loss": where, "events": events, "perturbations": marks}


def first_reach(losses, times, level):
    for i, v in enumerate(losses):
        if v <= level:
            return i, times[i]
    return None, None


def summarize(runs: list[dict], levels) -> str:
    """The markdown tables: time to each loss level, and how each run ended."""
    lines = ["| method | " + " | ".join(f"loss <= {lv:g}: runs, median iters (s)" for lv in levels) + " |",
             "|---|" + "---|" * len(levels)]
    for method in METHODS:
        rs = [r for r in runs if r["method"] == method]
        cells = []
        for lv in levels:
            hits = [h for h in (first_reach(r["losses"], r["times"], lv) for r in rs) if h[0] is not None]
            if hits:
                its, secs = np.median([h[0] for h in hits]), np.median([h[1] for h in hits])
                cells.append(f"{len(hits)}/{len(rs)}, {its:.0f} ({secs:.2f} s)")
            else:
                cells.append(f"0/{len(rs)}, -")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "| method | final loss: median [min, max] | end point: local_minimum / sosp / descent / inconclusive "
              "| loss at certified ends | nearby point at loss < 1e-20 | escapes (perturbations) per run: median [max] "
              "| iterations: median | training s: median |",
              "|---|---|---|---|---|---|---|---|"]
    for method in METHODS:
        rs = [r for r in runs if r["method"] == method]
        fl = [r["final_loss"] for r in rs]
        counts = [sum(r["verdict"] == v for r in rs) for v in ("local_minimum", "sosp", "descent", "inconclusive")]
        certified = sorted({f"{r['verdict_loss']:.4g}" for r in rs if r["verdict"] in ("local_minimum", "sosp")})
        zero = sum(r["verdict_loss"] < 1e-20 for r in rs)  # interpolation to rounding: a global minimum
        moves = [sum(e["accepted"] and e["verdict"] == "descent" for e in r["events"]) + len(r["perturbations"])
                 for r in rs]
        lines.append(f"| {method} | {np.median(fl):.3g} [{min(fl):.3g}, {max(fl):.3g}] | "
                     + " / ".join(map(str, counts)) + f" | {', '.join(certified) or '-'} | {zero}/{len(rs)} "
                     f"| {np.median(moves):.0f} [{max(moves)}] | {np.median([r['iterations'] for r in rs]):.0f} | "
                     f"{np.median([r['train_seconds'] for r in rs]):.2f} |")
    return "\n".join(lines)


def events_table(runs: list[dict], method: str, seed: int) -> str:
    r = next(r for r in runs if r["method"] == method and r["seed"] == seed)
    lines = [f"Events of `{method}`, seed {seed}:", "",
             "| iteration | verdict | order | test | direction | loss before | nearby | after | zeroed | merged |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in r["events"]:
        lines.append(f"| {e['iteration']} | {e['verdict']} | {e['order'] or '-'} | {e['test'] or '-'} | "
                     f"{e['direction'] or '-'} | {e['loss_before']:.4g} | {e['loss_nearby']:.4g} | "
                     f"{e['loss_after']:.4g} | {e['zeroed']} | {e['merged']} |")
    return "\n".join(lines)


def plot(results: dict, path: Path, seed: int = 0) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    colors = dict(zip(METHODS, ("tab:gray", "tab:orange", "tab:blue", "tab:olive", "tab:red")))
    fig, axes = plt.subplots(len(results), 2, figsize=(14, 4.6 * len(results)), squeeze=False)
    for row, (name, (runs, iters)) in enumerate(results.items()):
        ax = axes[row, 0]
        for method in METHODS:
            r = next(r for r in runs if r["method"] == method and r["seed"] == seed)
            ax.semilogy(r["losses"], color=colors[method], label=method, lw=1.3)
            for e in r["events"]:
                marker = {"descent": "v" if e["order"] == 2 else "1", "local_minimum": "*", "sosp": "P"}.get(
                    e["verdict"], "x")
                ax.semilogy([e["iteration"]], [e["loss_before"]], marker, color=colors[method], ms=9)
                if e["accepted"]:
                    ax.semilogy([e["iteration"]] * 2, [e["loss_before"], max(e["loss_after"], 1e-14)],
                                color=colors[method], lw=0.8)
            for it in r["perturbations"]:
                ax.semilogy([it], [r["losses"][min(it, len(r["losses"]) - 1)]], "|", color=colors[method], ms=9)
        ax.set(xlabel="iteration", ylabel="MSE loss", title=f"{name} student, seed {seed}: v order-2 escape, "
               "1 order-1 step, x inconclusive, * local minimum, P sosp, | perturbation")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8)
        ax = axes[row, 1]
        for method in METHODS:
            rs = [r for r in runs if r["method"] == method]
            grid = np.empty((len(rs), iters))
            for j, r in enumerate(rs):
                L = np.asarray(r["losses"])
                grid[j, :L.size] = L
                grid[j, L.size:] = r["final_loss"]  # a run that stopped keeps its final loss
            ax.semilogy(np.median(grid, axis=0), color=colors[method], label=method, lw=1.5)
        ax.set(xlabel="iteration", ylabel="median MSE loss over seeds",
               title=f"{name} student, median over {len(rs)} seeds")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_markdown(md: Path, body: str) -> None:
    """Replace the results section of ``md`` (between the markers), keeping the rest."""
    if md.exists():
        text = md.read_text()
        if BEGIN in text and END in text:
            head, rest = text.split(BEGIN, 1)
            md.write_text(head + BEGIN + "\n" + body + "\n" + END + rest.split(END, 1)[1])
            return
    md.write_text(f"# Escaping saddles: results\n\n{BEGIN}\n{body}\n{END}\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="2 seeds, 3000 iterations per run (smoke test)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                    help="folder for ESCAPE.md (its results section), escape_loss.png, escape_results.json")
    args = ap.parse_args(argv)
    seeds = 2 if args.quick else args.seeds
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    X, Y = dataset()
    t0 = time.perf_counter()
    results = {}
    for name, sc in SCENARIOS.items():
        iters = 3000 if args.quick else sc["iters"]
        runs = []
        for seed in range(seeds):
            for method in METHODS:
                r = run(method, seed, sc["width"], X, Y, iters)
                runs.append(r)
                print(f"{name:6s} seed {seed:2d} {method:28s} final {r['final_loss']:.3g} after {r['iterations']} it, "
                      f"{r['train_seconds']:.1f} s, end: {r['verdict']}", flush=True)
        results[name] = (runs, iters)
    total = time.perf_counter() - t0
    command = "python experiments/escape_compare.py" + (" --quick" if args.quick else "") + (
        f" --seeds {args.seeds}" if args.seeds != 10 and not args.quick else "")
    has_plot = plot(results, args.out / "escape_loss.png")
    parts = [f"Command: `{command}` ({seeds} seeds; torch {torch.__version__}, 1 thread; {total:.0f} s in all, "
             "checks and final verdicts included).",
             f"GD lr {LR_GD}; Adam lr {LR_ADAM}; perturbed GD: GD plus a uniform draw from the ball of radius "
             f"{PGD_RADIUS} at each stall; stall (perturbed GD and escapes): {STALL}.", ""]
    for name, (runs, iters) in results.items():
        parts += [f"### {name} student ({SCENARIOS[name]['width']} hidden neurons, at most {iters} iterations)", "",
                  summarize(runs, LEVELS[name]), "", events_table(runs, METHODS[-1], 0), ""]
    parts.append("![loss vs iteration](escape_loss.png)" if has_plot else "(no plot: matplotlib is not installed)")
    body = "\n".join(parts)
    write_markdown(args.out / "ESCAPE.md", body)
    slim = {name: [{k: v for k, v in r.items() if k not in ("losses", "times")}
                   | {"first_reach": {str(lv): first_reach(r["losses"], r["times"], lv) for lv in LEVELS[name]}}
                   for r in runs] for name, (runs, _) in results.items()}
    (args.out / "escape_results.json").write_text(json.dumps({"command": command, "runs": slim}, indent=1))
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
