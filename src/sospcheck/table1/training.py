"""Data, initialisation and full-batch Adam for a batch of independent runs (PyTorch, float64).

Each run ``b`` minimises ``F_b(z) = (1/m) sum_i l(W2 h(W1 x_i + b1) + b2, y_i) + (lam/2) |z|^2``.
Runs are stacked along a leading batch axis and share one Adam (elementwise, so each run follows
exactly its own trajectory); gradients are written out by hand (``h'(0) = s_minus``, as torch's
ReLU), which keeps an iteration to a few kernels and lets a CUDA graph replay a block of iterations.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .presets import Preset, SizeSetting

__all__ = ["make_data", "init_weights", "train_adam", "pick_device", "BETAS", "EPS"]

BETAS = (0.9, 0.999)
EPS = 1e-8


def make_data(setting: SizeSetting, seed: int, loss: str = "squared") -> tuple[np.ndarray, np.ndarray]:
    """``x_i, y_i ~ N(0, 1)`` i.i.d. (labels ``sign(y_i)`` for the logistic loss); one stream per (seed, setting)."""
    rng = np.random.default_rng([int(seed), setting.dx, setting.dh, setting.m])
    X = rng.standard_normal((setting.m, setting.dx))
    Y = rng.standard_normal((setting.m, 1))
    if loss == "logistic":
        Y = np.where(Y >= 0, 1.0, -1.0)
    return X, Y


def init_weights(setting: SizeSetting, seed: int) -> dict:
    """PyTorch's ``nn.Linear`` default: every weight and bias ``~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    rng = np.random.default_rng([int(seed), setting.dx, setting.dh, setting.m, 1])
    a1, a2 = 1 / math.sqrt(setting.dx), 1 / math.sqrt(setting.dh)
    return {"W1": rng.uniform(-a1, a1, (setting.dh, setting.dx)), "b1": rng.uniform(-a1, a1, setting.dh),
            "W2": rng.uniform(-a2, a2, (1, setting.dh)), "b2": rng.uniform(-a2, a2, 1)}


def pick_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when PyTorch sees a GPU, else ``"cpu"``; an unusable ``"cuda"`` is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"`device` is {device!r} but PyTorch {torch.__version__} sees no GPU")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"`device` must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return device


class _Batch:
    """Flat parameters ``P`` (B, n) with views ``W1, b1, W2, b2``, Adam state, and one step in place."""

    def __init__(self, torch, X, Y, P, dims, loss, s_plus, s_minus, lam):
        self.t = torch
        self.X, self.Y, self.P = X, Y, P
        B, m, dx = X.shape
        dh = dims
        self.m = m
        o = [0, dh * dx, dh * dx + dh, dh * dx + 2 * dh, dh * dx + 2 * dh + 1]
        self.W1 = P[:, o[0]:o[1]].view(B, dh, dx)
        self.b1 = P[:, o[1]:o[2]]
        self.W2 = P[:, o[2]:o[3]].view(B, 1, dh)
        self.b2 = P[:, o[3]:o[4]]
        self.loss, self.lam = loss, lam
        self.s_plus = torch.tensor(s_plus, dtype=P.dtype, device=P.device)   # tensors: float64 slopes
        self.s_minus = torch.tensor(s_minus, dtype=P.dtype, device=P.device)
        self.mom = torch.zeros_like(P)
        self.vel = torch.zeros_like(P)
        self.step_count = torch.zeros((), dtype=P.dtype, device=P.device)
        self.lr = torch.zeros((), dtype=P.dtype, device=P.device)

    def objective_and_grad(self):
        """Per-run objective (B,) and flat gradient (B, n)."""
        t = self.t
        N = t.baddbmm(self.b1[:, None, :], self.X, self.W1.transpose(1, 2))          # (B, m, dh)
        slope = t.where(N > 0, self.s_plus, self.s_minus)
        H = N * slope
        out = t.baddbmm(self.b2[:, None, :], H, self.W2.transpose(1, 2))             # (B, m, 1)
        if self.loss == "squared":
            diff = out - self.Y
            value = 0.5 * (diff * diff).mean(dim=(1, 2))
            r = diff / self.m
        else:
            margin = self.Y * out
            value = t.nn.functional.softplus(-margin).mean(dim=(1, 2))
            r = -self.Y * t.sigmoid(-margin) / self.m
        D = t.bmm(r, self.W2) * slope                                                 # (B, m, dh)
        G = t.cat([t.bmm(D.transpose(1, 2), self.X).flatten(1), D.sum(1),
                   t.bmm(r.transpose(1, 2), H).flatten(1), r.sum(1)], dim=1)
        if self.lam:
            G = G + self.lam * self.P
            value = value + 0.5 * self.lam * (self.P * self.P).sum(1)
        return value, G

    def adam_step(self):
        """torch.optim.Adam's update (no amsgrad, no decoupled decay) on the flat parameters."""
        b1, b2 = BETAS
        _, G = self.objective_and_grad()
        self.step_count += 1
        self.mom.mul_(b1).add_(G, alpha=1 - b1)
        self.vel.mul_(b2).addcmul_(G, G, value=1 - b2)
        bc1 = 1 - b1 ** self.step_count
        bc2 = 1 - b2 ** self.step_count
        denom = (self.vel.sqrt() / bc2.sqrt()).add_(EPS)
        self.P.sub_((self.lr / bc1) * self.mom / denom)


def train_adam(setting: SizeSetting, seeds: list, preset: Preset, device: str = "cpu", cuda_graph: bool = True,
               threads: int | None = 1) -> tuple[list[dict], dict]:
    """Train one run per seed (batched) with the preset's schedule; return their weights and a training record.

    Returns ``(weights, info)``: ``weights[j]`` holds NumPy ``W1, b1, W2, b2`` of seed ``seeds[j]``;
    ``info`` has the device, batch size, wall time, per-run final objective and gradient norm.
    """
    import torch

    if not seeds:
        raise ValueError("`seeds` must name at least one seed")
    if threads:
        torch.set_num_threads(int(threads))
    dev = torch.device(pick_device(device))
    data = [make_data(setting, s, preset.loss) for s in seeds]
    inits = [init_weights(setting, s) for s in seeds]
    to = dict(dtype=torch.float64, device=dev)
    X = torch.tensor(np.stack([d[0] for d in data]), **to)
    Y = torch.tensor(np.stack([d[1] for d in data]), **to)
    P = torch.tensor(np.stack([np.concatenate([w["W1"].ravel(), w["b1"], w["W2"].ravel(), w["b2"]])
                               for w in inits]), **to)
    run = _Batch(torch, X, Y, P, setting.dh, preset.loss, 1.0, float(preset.s_minus), float(preset.weight_decay))
    chunk = math.gcd(math.gcd(preset.iters, preset.decay_every), 100)
    use_graph = cuda_graph and dev.type == "cuda" and preset.iters > 2 * chunk

    def lr_at(it: int) -> float:
        return preset.lr * preset.decay ** (it // preset.decay_every)

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    it, graph_error = 0, None
    if use_graph:
        stream = torch.cuda.Stream(dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):  # the first block runs eagerly: warm-up before capture
            run.lr.fill_(lr_at(0))
            for _ in range(chunk):
                run.adam_step()
        torch.cuda.current_stream(dev).wait_stream(stream)
        it = chunk
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):  # recorded, not run: the state is unchanged if capture fails
                for _ in range(chunk):
                    run.adam_step()
        except RuntimeError as exc:
            use_graph, graph_error = False, f"{type(exc).__name__}: {exc}"
        while use_graph and it < preset.iters:
            run.lr.fill_(lr_at(it))
            graph.replay()
            it += chunk
    if not use_graph:
        while it < preset.iters:
            run.lr.fill_(lr_at(it))
            run.adam_step()
            it += 1
    value, G = run.objective_and_grad()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    Pn = run.P.detach().cpu().numpy()
    dh, dx = setting.dh, setting.dx
    weights = [{"W1": p[:dh * dx].reshape(dh, dx).copy(), "b1": p[dh * dx:dh * dx + dh].copy(),
                "W2": p[dh * dx + dh:dh * dx + 2 * dh].reshape(1, dh).copy(), "b2": p[-1:].copy()} for p in Pn]
    info = {
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "batch": len(seeds), "cuda_graph": bool(use_graph), "cuda_graph_error": graph_error,
        "iters": it,
        "seconds": seconds, "seconds_per_iter": seconds / max(it, 1),
        "objective": value.detach().cpu().numpy().tolist(),
        "grad_norm": torch.linalg.vector_norm(G, dim=1).detach().cpu().numpy().tolist(),
    }
    return weights, info
