"""Deep networks at trained points: the paper's data and protocol with two and three hidden layers (CPU).

``x_i, y_i ~ N(0, 1)`` i.i.d. (dx = 10, m = 1000), PyTorch's default initialisation, full-batch Adam (lr 1e-3,
x0.2 every 2,000 steps, 20,000 steps) on the mean squared error, float64. At the trained point: pairs near a
kink per hidden layer at relative thresholds (``|N| <= tau |[W_l b_l]_k| max|[a; 1]|``), the verdict of
:func:`sospcheck.deep.check_deep` with its default tolerances, and its cost against one gradient.

    PYTHONPATH=src python experiments/deep_study.py [--seeds 5] [--out experiments/deep_study.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import numpy as np
import torch
from torch import nn

from sospcheck.deep import check_deep
from sospcheck.deep.bridge import deep_from_torch
from sospcheck.deep.kinks import boundary_thresholds
from sospcheck.deep.model import deep_forward

ARCHS = {"2x2": (2, 2), "4x4": (4, 4), "2x2x2": (2, 2, 2)}
THRESHOLDS = (1e-9, 1e-6, 1e-3)


def train(widths: tuple, seed: int, dx: int = 10, m: int = 1000, iters: int = 20_000, every: int = 2_000):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(m, dx, generator=g, dtype=torch.float64)
    Y = torch.randn(m, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    dims = [dx, *widths, 1]
    layers = []
    for l in range(len(dims) - 1):
        layers.append(nn.Linear(dims[l], dims[l + 1]))
        if l < len(dims) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=every, gamma=0.2)
    crit = nn.MSELoss()
    for _ in range(iters):
        opt.zero_grad()
        loss = crit(model(X), Y)
        loss.backward()
        opt.step()
        sched.step()
    return model, X, Y


def gradient_seconds(model, X, Y, repeat: int = 20) -> float:
    crit = nn.MSELoss()
    t = time.perf_counter()
    for _ in range(repeat):
        model.zero_grad()
        crit(model(X), Y).backward()
    return (time.perf_counter() - t) / repeat


def study(seeds: int) -> list[dict]:
    rows = []
    for name, widths in ARCHS.items():
        for seed in range(seeds):
            t0 = time.perf_counter()
            model, X, Y = train(widths, seed)
            t_train = time.perf_counter() - t0
            net = deep_from_torch(model)
            Xn, Yn = X.numpy(), Y.numpy()
            fwd = deep_forward(net, Xn)
            near = {}
            for tau in THRESHOLDS:
                thr = boundary_thresholds(net, fwd, tau)
                near[f"{tau:g}"] = [int(np.sum(np.abs(N) <= t[None, :])) for N, t in zip(fwd.N, thr)]
            t1 = time.perf_counter()
            r = check_deep(net, Xn, Yn, reduction="mean", fragility=False)
            t_check = time.perf_counter() - t1
            t_grad = gradient_seconds(model, X, Y)
            # indicative only: Adam stops short of stationarity on the kinks' stratum (|gamma| / scale ~ 1e-6);
            # with the gradient tolerance raised past it the second order is examined (a descent it finds is
            # still verified on the true loss; a minimum or sosp is relative to the raised tolerance)
            relaxed = check_deep(net, Xn, Yn, reduction="mean", fragility=False, tolerances={"gradient": 1e-4})
            rows.append(dict(arch=name, seed=seed, loss=r.loss_value, verdict=r.verdict.value,
                             reason=r.reason_code.value, near_kinks=near, groups=r.stats.groups,
                             likq=r.stats.likq, gamma=r.stats.output_gradient_norm,
                             scale=r.stats.output_gradient_scale, check_s=t_check, gradient_s=t_grad,
                             train_s=t_train, relaxed=relaxed.reason_code.value,
                             relaxed_flat=[relaxed.stats.L, relaxed.stats.K]))
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    torch.set_num_threads(1)  # tiny networks: threads only contend
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default="experiments/deep_study.json")
    args = ap.parse_args()
    rows = study(args.seeds)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    for name in ARCHS:
        sub = [r for r in rows if r["arch"] == name]
        print(name, Counter(r["reason"] for r in sub), Counter(r["relaxed"] for r in sub),
              "median check/gradient", float(np.median([r["check_s"] / r["gradient_s"] for r in sub])))


if __name__ == "__main__":
    main()
