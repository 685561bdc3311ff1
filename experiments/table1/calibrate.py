"""GPU calibration before a paper-scale sweep: graph vs eager vs CPU agreement, and time per Adam step.

    PYTHONPATH=src python3 experiments/table1/calibrate.py [--steps 1000]

Prints, for each of the paper's settings, the seconds per batched Adam step and the projected
time of 200,000 steps, so that the seeds per command can be chosen to fit a time limit.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from sospcheck.table1.presets import PAPER_SETTINGS, SizeSetting, get_preset
from sospcheck.table1.training import pick_device, train_adam


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    args = ap.parse_args()
    dev = pick_device("auto")
    for variant in ("paper", "paper-leaky", "paper-logistic", "paper-wd"):
        p = replace(get_preset(variant), iters=400, decay_every=200)
        s = SizeSetting(10, 3, 500)
        ref, _ = train_adam(s, [0, 1], p, device="cpu")
        for graph in (True, False):
            w, info = train_adam(s, [0, 1], p, device=dev, cuda_graph=graph)
            diff = max(float(np.max(np.abs(a[k] - b[k]))) for a, b in zip(w, ref) for k in a)
            print(f"{variant:15s} {dev} graph={info['cuda_graph']} (asked {graph}) max |w - w_cpu| = {diff:.2e}")
    for s in PAPER_SETTINGS:
        B = 10 if s.dx >= 1000 else 40
        p = replace(get_preset("paper"), iters=args.steps, decay_every=args.steps)
        _, info = train_adam(s, list(range(B)), p, device=dev)
        spi = info["seconds_per_iter"]
        print(f"{s.label:18s} batch {B:2d}: {spi * 1e6:8.1f} us/step -> 200,000 steps {spi * 2e5:7.1f} s "
              f"(graph {info['cuda_graph']})", flush=True)


if __name__ == "__main__":
    main()
