"""Can a search inside the certified radius falsify a `local_minimum` at z*? (issue 13, item 7.)

For the saved Table 1 weights: the check exactly as the Table 1 recheck runs it (``check(..., snap=True,
nearby=True)``, mean reduction, the preset's loss and weight decay); for every run whose verdict at z* is
``local_minimum`` with a certified radius ``r* > 0`` (``nearby.check.certified_radius``, DESIGN.md section 4),
a search for a lower loss in the ball of radius ``r*`` around z*:

- ``random``: Gaussian directions in the full parameter space;
- ``stratum``: Gaussian directions with each held pair's input-weight change projected onto ``xbar_i^perp``
  (the pair stays on its kink to first order: the slow directions of a kink minimum);
- ``descent``: from the best of those, projected gradient steps on the ball (the gradient of the true loss
  at the trial point, a backtracking step, projection onto ``|eta| <= r*``).

Each trial point is scored by ``R(z* + eta) - R(z*)`` computed below the loss's rounding
(:func:`sospcheck.loss_change.risk_change_and_noise`); a trial *falsifies* the certificate when the change is
below ``-(slack + noise)``, ``slack`` the radius' own allowance for the leftover gradient
(``components["loss_slack"]``), ``noise`` the rounding bound of the difference. The same search at ``10 r*``
shows how conservative ``r*`` is (a decrease there does not contradict the certificate).

    PYTHONPATH=src python experiments/radius_audit.py [--presets paper paper-leaky paper-logistic paper-wd]
        [--runs 10] [--skip 1000,10,10000] [--out experiments/radius_audit.json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from sospcheck import Direction, TwoLayerNet, Verdict, check
from sospcheck.losses import get_loss
from sospcheck.loss_change import risk_change_and_noise
from sospcheck.model import forward
from sospcheck.nearby import on_kink
from sospcheck.table1.presets import Preset, SizeSetting
from sospcheck.table1.store import Store
from sospcheck.table1.training import make_data

HERE = Path(__file__).resolve().parent


def _net(net: TwoLayerNet, eta: np.ndarray) -> TwoLayerNet:
    return net.perturbed(Direction.from_vector(net, eta), 1.0)


def _gradient(net: TwoLayerNet, X, Yp, loss, weight: float, lam: float) -> np.ndarray:
    """The gradient of ``weight sum_i l(out_i, y_i) + lam/2 |z|^2`` at a point with no pair on a kink."""
    fwd = forward(net, X)
    r = weight * loss.grad(fwd.out, Yp)  # (m, dy)
    dW2, db2 = r.T @ fwd.O, (r.sum(axis=0) if net.has_b2 else None)
    dZ = ((r @ net.W2) * net.slope(fwd.N)).T @ fwd.Xbar  # (dh, nf)
    g = Direction(dZ[:, :net.dx], dZ[:, net.dx] if net.has_b1 else None, dW2, db2).vector()
    return g + lam * net.as_direction().vector()


def _stratum_direction(net: TwoLayerNet, X: np.ndarray, held: np.ndarray, rng) -> np.ndarray:
    """A Gaussian direction whose input-weight part keeps every held pair on its kink to first order."""
    d = Direction.from_vector(net, rng.standard_normal(net.n_params))
    Xbar = net.augment(X)
    dZ = np.hstack([d.W1, d.b1[:, None]]) if d.b1 is not None else np.array(d.W1)
    for k in range(net.dh):
        rows = Xbar[held[:, k]][:, :dZ.shape[1]]
        if rows.size:
            q, _ = np.linalg.qr(rows.T)
            dZ[k] -= q @ (q.T @ dZ[k])
    W1 = dZ[:, :net.dx]
    b1 = dZ[:, net.dx] if d.b1 is not None else None
    return Direction(W1, b1, d.W2, d.b2).vector()


class Trials:
    """The scored trial points of one ball: the lowest change, and how many falsify."""

    def __init__(self, star, X, Yp, loss, weight, lam, threshold):
        self.args = (star, X, Yp, loss, weight, lam)
        self.threshold, self.best, self.best_eta, self.n, self.falsified = threshold, math.inf, None, 0, 0

    def score(self, eta: np.ndarray) -> float:
        star, X, Yp, loss, weight, lam = self.args
        change, noise = risk_change_and_noise(star, _net(star, eta), X, Yp, loss, weight, lam)
        self.n += 1
        self.falsified += change < -(self.threshold + noise)
        if change < self.best:
            self.best, self.best_eta = change, eta
        return change


def _search(star, X, Yp, loss, weight, lam, held, r, threshold, rng, n_dir=24, n_grad=20) -> Trials:
    """Random, stratum and projected-gradient trials in the ball ``|eta| <= r`` (module docstring)."""
    tr = Trials(star, X, Yp, loss, weight, lam, threshold)
    p = star.as_direction().vector().size
    for j in range(n_dir):
        v = rng.standard_normal(p) if j % 2 == 0 else _stratum_direction(star, X, held, rng)
        for t in (1.0, 0.5, 0.1):
            tr.score(t * r * v / np.linalg.norm(v))
            tr.score(-t * r * v / np.linalg.norm(v))
    eta = tr.best_eta
    step = 0.5 * r
    for _ in range(n_grad):
        g = _gradient(_net(star, eta), X, Yp, loss, weight, lam)
        if not np.any(g):
            break
        trial = eta - step * g / np.linalg.norm(g)
        if np.linalg.norm(trial) > r:
            trial *= r / np.linalg.norm(trial)
        before = tr.best
        if tr.score(trial) < before:
            eta = trial
        else:
            step *= 0.5
    return tr


def audit_run(preset: Preset, setting: SizeSetting, seed: int, weights: dict, rng) -> dict:
    X, Y = make_data(setting, seed, preset.loss)
    net = TwoLayerNet(W1=weights["W1"], b1=weights["b1"], W2=weights["W2"], b2=weights["b2"], s_minus=preset.s_minus)
    t0 = time.perf_counter()
    res = check(net, X, Y, loss=preset.loss, reduction="mean", weight_decay=preset.weight_decay, snap=True,
                fragility=False, nearby=True)
    out = {"seed": seed, "verdict_at_z_star": res.nearby.verdict.value if res.nearby.verdict else None,
           "seconds": time.perf_counter() - t0}
    nb = res.nearby
    if nb.verdict != Verdict.LOCAL_MINIMUM:
        return out
    rad = nb.result.certified_radius
    out.update(r_star=rad.value, rigorous=rad.rigorous, inside=nb.inside_certified_radius,
               z_norm=float(np.linalg.norm(nb.net.as_direction().vector())), components=rad.components)
    if not (rad.value > 0 and math.isfinite(rad.value)):
        return out
    loss = get_loss(preset.loss)
    Yp = loss.prepare(Y, net.dy)
    weight = 1.0 / X.shape[0]
    held = on_kink(nb.net, X, 1e-12)
    slack = rad.components.get("loss_slack", 0.0) or 0.0
    inside = _search(nb.net, X, Yp, loss, weight, preset.weight_decay, held, rad.value, slack, rng)
    outside = _search(nb.net, X, Yp, loss, weight, preset.weight_decay, held, 10 * rad.value, slack, rng)
    out.update(trials=inside.n, falsified=inside.falsified, lowest_change=inside.best,
               trials_10r=outside.n, lower_at_10r=outside.falsified, lowest_change_10r=outside.best)
    return out


def _median(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.median(xs)) if xs else None


def table(results: dict) -> str:
    lines = ["| preset | (dx, dh, m) | runs | local_minimum at z* | r* > 0 | rigorous | r* / abs(z*) median | "
             "weights inside r* | trials in r* | falsified | lower loss found at 10 r* |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (preset, key), runs in results.items():
        lm = [r for r in runs if r["verdict_at_z_star"] == "local_minimum"]
        pos = [r for r in lm if r.get("r_star") and r["r_star"] > 0]
        rel = _median([r["r_star"] / r["z_norm"] for r in pos])
        lines.append(f"| `{preset}` | {key} | {len(runs)} | {len(lm)} | {len(pos)} | "
                     f"{sum(bool(r.get('rigorous')) for r in pos)} | {rel:.2g} | "
                     f"{sum(bool(r.get('inside')) for r in pos)} | {sum(r.get('trials', 0) for r in pos)} | "
                     f"{sum(r.get('falsified', 0) for r in pos)} | "
                     f"{sum(r.get('lower_at_10r', 0) > 0 for r in pos)} of {len(pos)} |" if pos else
                     f"| `{preset}` | {key} | {len(runs)} | {len(lm)} | 0 | | | | | | |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="*", default=["paper", "paper-leaky", "paper-logistic", "paper-wd"])
    ap.add_argument("--runs", type=int, default=10, help="saved runs per setting (the first seeds)")
    ap.add_argument("--skip", nargs="*", default=["1000,10,10000"], help="settings dx,dh,m left out")
    ap.add_argument("--out", type=Path, default=HERE / "radius_audit.json")
    a = ap.parse_args()
    skip = {tuple(int(v) for v in s.split(",")) for s in a.skip}
    rng = np.random.default_rng(0)
    results: dict = {}
    t0 = time.perf_counter()
    for name in a.presets:
        store = Store(HERE / "table1" / name)
        preset = store.preset()
        for s in preset.settings:
            if (s.dx, s.dh, s.m) in skip:
                continue
            runs = []
            for seed in range(min(a.runs, preset.n_seeds)):
                loaded = store.load_weights(s, seed)
                if loaded is not None:
                    runs.append(audit_run(preset, s, seed, loaded[0], rng))
            if not runs:  # a setting the preset lists but never trained here
                continue
            results[(name, f"({s.dx}, {s.dh}, {s.m})")] = runs
            print(table({(name, f"({s.dx}, {s.dh}, {s.m})"): runs}).splitlines()[-1], flush=True)
    a.out.write_text(json.dumps({f"{p} {k}": v for (p, k), v in results.items()}, indent=1, default=float))
    print(table(results))
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
