"""MNIST-size run (issue 3, item e): each phase of the check at m=60000, dx=784, dh=1000, dy=10.

Synthetic Gaussian data of that shape; a random hidden layer whose output layer is refit by least
squares (so step 1 passes), then
  - the full ``check`` (it stops at step 2 with a verified first-order direction: the hidden layer
    of a random point is not stationary), and
  - the second-order phase forced on the same point (``second_order_test`` with the matrix-free
    solver): the cost the benign case would add after a passing first order.
Ratios are against one full-batch gradient of the same risk on the same backend.

    python benchmarks/mnist_size.py [--m 60000 --dx 784 --dh 1000 --dy 10] [--backend numpy|torch]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sospcheck import Budget, Tolerances, TwoLayerNet, check  # noqa: E402
from sospcheck.first_order import neuron_tests  # noqa: E402
from sospcheck.geometry import boundary_mask  # noqa: E402
from sospcheck.losses import get_loss  # noqa: E402
from sospcheck.point import evaluate_point  # noqa: E402
from sospcheck.second_order import second_order_test  # noqa: E402
from sospcheck.snap import refit_output_layer  # noqa: E402


def gradient_time(net, X, Y, backend, device, repeats=3) -> float:
    """Seconds for one full-batch gradient of 0.5 |Y(x) - y|^2 (forward + backward)."""
    if backend == "torch":
        import torch

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        t = lambda a: torch.as_tensor(np.array(a), device=dev)  # noqa: E731
        Xt, Yt = t(X), t(Y)
        params = [t(p).requires_grad_() for p in (net.W1, net.b1, net.W2, net.b2)]

        def once():
            W1, b1, W2, b2 = params
            out = torch.relu(Xt @ W1.T + b1) @ W2.T + b2
            loss = 0.5 * ((out - Yt) ** 2).sum()
            torch.autograd.grad(loss, params)
            if dev.type == "cuda":
                torch.cuda.synchronize()
    else:
        def once():
            N = X @ net.W1.T + net.b1
            O = np.maximum(N, 0)
            R = O @ net.W2.T + net.b2 - Y
            gW2 = R.T @ O
            G = (R @ net.W2) * (N > 0)
            gW1 = G.T @ X
            return gW2, gW1, G.sum(0), R.sum(0)
    once()
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    return (time.perf_counter() - t0) / repeats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=60000)
    ap.add_argument("--dx", type=int, default=784)
    ap.add_argument("--dh", type=int, default=1000)
    ap.add_argument("--dy", type=int, default=10)
    ap.add_argument("--backend", default="numpy", choices=["numpy", "torch"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None, help="write the numbers here")
    args = ap.parse_args(argv)

    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.m, args.dx))
    Y = rng.standard_normal((args.m, args.dy))
    net = TwoLayerNet(rng.standard_normal((args.dh, args.dx)) / np.sqrt(args.dx), 0.1 * rng.standard_normal(args.dh),
                      rng.standard_normal((args.dy, args.dh)) / np.sqrt(args.dh), np.zeros(args.dy))
    loss = get_loss("squared")
    t0 = time.perf_counter()
    net, _ = refit_output_layer(net, X, Y, loss, 1.0, 0.0)
    t_refit = time.perf_counter() - t0

    rec = {"m": args.m, "dx": args.dx, "dh": args.dh, "dy": args.dy, "p": net.n_params, "backend": args.backend,
           "X_bytes": X.nbytes, "refit_s": t_refit}
    rec["gradient_s"] = gradient_time(net, X, Y, args.backend, args.device)

    t0 = time.perf_counter()
    res = check(net, X, Y, fragility=False, backend=args.backend, device=args.device)
    rec["check_s"] = time.perf_counter() - t0
    rec["check_verdict"] = res.verdict.value
    rec["check_test"] = res.descent.test if res.descent else None
    rec["check_timings"] = res.timings

    # the second-order phase forced on the same point, as the benign case would run it
    tol, bud = Tolerances(), Budget()
    t0 = time.perf_counter()
    pt = evaluate_point(net, X, Y, loss, 1.0, 0.0)
    boundary = boundary_mask(pt.fwd.N, net.Z, pt.fwd.Xbar, tol.boundary)
    neurons = neuron_tests(pt, boundary, tol)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    so = second_order_test(pt, neurons, boundary, tol, bud, np.random.default_rng(0), "matrix_free",
                           args.backend, args.device)
    rec["forward_first_order_s"] = t_first
    rec["second_order_s"] = time.perf_counter() - t0
    rec["second_order_outcome"] = so.outcome
    rec["second_order_detail"] = so.records[0].detail if so.records else so.inconclusive
    rec["full_pipeline_s"] = t_first + rec["second_order_s"]
    rec["ratio_check_over_gradient"] = rec["check_s"] / rec["gradient_s"]
    rec["ratio_full_pipeline_over_gradient"] = rec["full_pipeline_s"] / rec["gradient_s"]
    rec["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rec["peak_rss_over_X"] = rec["peak_rss_bytes"] / X.nbytes
    print(json.dumps(rec, indent=2, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
