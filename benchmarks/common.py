"""Shared pieces of the benchmarks (issue 3): data, training, timing, the check's own pipeline pieces,
planted stationary instances and the machine description.

Everything here is float64 NumPy, squared loss with ``reduction="sum"`` (``R = 1/2 sum |yhat - y|^2``),
ReLU, ``dy`` outputs, biases on both layers: the setting ``check(net, X, Y)`` uses by default.

BLAS and torch run single-threaded unless the environment says otherwise (``OPENBLAS_NUM_THREADS``,
``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` are set to 1 here, before NumPy loads, when unset): on a
small machine shared with other jobs, multi-threaded OpenBLAS measured up to 20x slower and erratic
(busy-waiting threads competing for the cores); one thread gives stable, reproducible ratios.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import contextlib  # noqa: E402
import datetime as _dt  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# this tree's sources, unless PYTHONPATH names another tree's (``PYTHONPATH=<worktree>/src`` measures that
# one, here and in the probes' subprocesses, which inherit the variable)
if not any((Path(p) / "sospcheck").is_dir() for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p):
    sys.path.insert(0, str(ROOT / "src"))

from sospcheck import Budget, Tolerances, TwoLayerNet, check  # noqa: E402
from sospcheck.first_order import neuron_tests, output_layer_test  # noqa: E402
from sospcheck.geometry import boundary_mask  # noqa: E402
from sospcheck.losses import get_loss, reduction_weight  # noqa: E402
from sospcheck.point import evaluate_point  # noqa: E402
from sospcheck.second_order import second_order_test  # noqa: E402

SQUARED = get_loss("squared")


# --------------------------------------------------------------------------------------------- timing

def best_time(fn, repeats: int = 3, min_total: float = 0.0) -> float:
    """Smallest wall time of ``fn()`` over ``repeats`` calls after one warm-up call (more calls while the
    total stays under ``min_total`` seconds, for sub-millisecond functions)."""
    fn()
    times, total = [], 0.0
    while len(times) < repeats or (total < min_total and len(times) < 1000):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
    return min(times)


def timed(fn):
    """``(seconds, fn())`` for one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# ------------------------------------------------------------------------------------- data and nets

def gaussian_data(m: int, dx: int, dy: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``x_i, y_i`` iid N(0, I)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, dx)), rng.standard_normal((m, dy))


def random_net(dx: int, dh: int, dy: int = 1, seed: int = 0) -> TwoLayerNet:
    """He-style initialisation: ``W1 ~ N(0, 2/dx)``, ``b1 ~ N(0, 0.01)``, ``W2 ~ N(0, 1/dh)``, ``b2 = 0``."""
    rng = np.random.default_rng(seed + 1)
    return TwoLayerNet(rng.standard_normal((dh, dx)) * np.sqrt(2.0 / dx), 0.1 * rng.standard_normal(dh),
                       rng.standard_normal((dy, dh)) / np.sqrt(dh), np.zeros(dy))


def net_params(net: TwoLayerNet) -> list[np.ndarray]:
    return [np.array(net.W1), np.array(net.b1), np.array(net.W2), np.array(net.b2)]


def loss_and_grad(params: list[np.ndarray], X: np.ndarray, Y: np.ndarray) -> tuple[float, list[np.ndarray]]:
    """One full-batch forward + backward pass of ``1/2 sum |W2 relu(W1 x + b1) + b2 - y|^2`` in NumPy:
    the reference cost "one gradient evaluation" of every ratio."""
    W1, b1, W2, b2 = params
    N = X @ W1.T + b1
    O = np.maximum(N, 0.0)
    R = O @ W2.T + b2 - Y
    G = (R @ W2) * (N > 0)
    return 0.5 * float(np.sum(R * R)), [G.T @ X, G.sum(0), R.T @ O, R.sum(0)]


def gradient_seconds(net: TwoLayerNet, X: np.ndarray, Y: np.ndarray) -> float:
    """Best-of-several wall time of one full-batch gradient (:func:`loss_and_grad`)."""
    params = net_params(net)
    return best_time(lambda: loss_and_grad(params, X, Y), repeats=5, min_total=0.2)


def train_adam(net: TwoLayerNet, X: np.ndarray, Y: np.ndarray, iters: int, lr: float = 1e-3,
               final_lr_ratio: float = 0.01) -> tuple[TwoLayerNet, dict]:
    """Full-batch Adam (float64) on the mean squared loss; the step size decays geometrically from ``lr``
    to ``lr * final_lr_ratio``. Returns the net and the loss / gradient norm (sum reduction) at the end."""
    params = net_params(net)
    mom = [np.zeros_like(p) for p in params]
    var = [np.zeros_like(p) for p in params]
    b1, b2, eps, m = 0.9, 0.999, 1e-8, X.shape[0]
    for t in range(1, iters + 1):
        _, grads = loss_and_grad(params, X, Y)
        step = lr * final_lr_ratio ** ((t - 1) / max(1, iters - 1))
        for p, g, mo, v in zip(params, grads, mom, var):
            g = g / m
            mo *= b1
            mo += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= step * (mo / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    value, grads = loss_and_grad(params, X, Y)
    trained = net.with_weights(W1=params[0], b1=params[1], W2=params[2], b2=params[3])
    return trained, {"iters": iters, "loss": value, "grad_norm": float(np.sqrt(sum(np.sum(g * g) for g in grads)))}


# ------------------------------------------------------------------- the check's pipeline, in pieces

@dataclass
class Pieces:
    """What ``check``'s ``_analyze`` builds before step 4, built the same way (squared loss, sum)."""

    pt: object
    boundary: np.ndarray
    neurons: list
    tol: Tolerances
    output_stationary: bool
    seconds: float


def first_order_pieces(net: TwoLayerNet, X: np.ndarray, Y: np.ndarray, tol: Tolerances | None = None) -> Pieces:
    """``evaluate_point`` -> ``boundary_mask`` -> ``output_layer_test`` -> ``neuron_tests``, exactly as
    ``sospcheck.check._analyze`` calls them; ``seconds`` is their wall time."""
    tol = tol or Tolerances()
    t0 = time.perf_counter()
    Yp = SQUARED.prepare(Y, net.dy)
    pt = evaluate_point(net, X, Yp, SQUARED, reduction_weight("sum", X.shape[0]), 0.0)
    boundary = boundary_mask(pt.fwd.N, net.Z, pt.fwd.Xbar, tol.boundary)
    ol = output_layer_test(pt, tol)
    neurons = neuron_tests(pt, boundary, tol)
    return Pieces(pt, boundary, neurons, tol, ol.stationary, time.perf_counter() - t0)


def data_placement(backend: str, device: str | None = None):
    """The data on ``device`` for the pieces called directly, as ``check(backend="torch")`` does
    (``sospcheck.device_data.placement``); nothing for the numpy backend."""
    if backend != "torch":
        return contextlib.nullcontext()
    from sospcheck.device_data import placement

    return placement(device)


def forced_second_order(net: TwoLayerNet, X: np.ndarray, Y: np.ndarray, solver: str = "auto",
                        backend: str = "numpy", device: str | None = None) -> dict:
    """Step 4 run directly on the point, whatever first order said: "the cost as if first order had
    passed". Times the first-order pieces and ``second_order_test`` separately."""
    pieces = first_order_pieces(net, X, Y)
    t, so = timed(lambda: second_order_test(pieces.pt, pieces.neurons, pieces.boundary, pieces.tol, Budget(),
                                            np.random.default_rng(0), solver, backend, device))
    ecqp = next((q for q in so.records if q.kind == "ECQP"), None)
    return {"first_order_s": pieces.seconds, "second_order_s": t, "pipeline_s": pieces.seconds + t,
            "outcome": so.outcome or f"inconclusive: {so.inconclusive}", "solver": so.solver,
            "n_params_reduced": so.n_params_reduced, "min_eig": ecqp.min_eig if ecqp else None,
            "eig_tol": so.eig_tol, "hessian_norm": so.hessian_norm, "products": so.products,
            "M": int(pieces.boundary.sum()), "L": int(sum(n.n_flat for n in pieces.neurons))}


def timed_check(net: TwoLayerNet, X: np.ndarray, Y: np.ndarray, **kw) -> tuple[float, object]:
    """Wall time of one ``check`` call (``fragility=False`` unless given) and its result."""
    kw.setdefault("fragility", False)
    return timed(lambda: check(net, X, Y, **kw))


def describe_result(res) -> str:
    """``verdict`` plus the order and test of a descent, or the reason of an inconclusive result."""
    v = res.verdict.value
    if res.descent is not None:
        return f"{v} (order {res.descent.order}, {res.descent.test})"
    if res.reason:
        return f"{v} ({res.reason[:60]})"
    return v


# ------------------------------------------------------------------------- planted stationary points

def plant_residuals(G: np.ndarray, fixed_idx: np.ndarray, fixed_val: np.ndarray, rng: np.random.Generator,
                    scale: float) -> np.ndarray:
    """A residual vector ``r`` (length m) with ``G' r = 0`` and ``r[fixed_idx] = fixed_val``:
    the minimum-norm correction of the free entries plus a random component of norm ``scale`` in the
    null space of their constraints. ``G`` (m x q) holds one stationarity condition per column."""
    m = G.shape[0]
    free = np.setdiff1d(np.arange(m), fixed_idx)
    Gf = G[free]
    Q, _ = np.linalg.qr(Gf)  # orthonormal basis of the constrained directions of r_free
    noise = rng.standard_normal(free.size)
    noise -= Q @ (Q.T @ noise)
    noise *= scale / max(np.linalg.norm(noise), 1e-300)
    target = -G[fixed_idx].T @ fixed_val  # Gf' r_free must equal this
    r_free = np.linalg.lstsq(Gf.T, target, rcond=None)[0] + noise
    r = np.empty(m)
    r[fixed_idx], r[free] = fixed_val, r_free
    return r


def kink_instance(M: int, dx: int = 16, m: int = 200, seed: int = 0, residual_scale: float = 1.0) -> dict:
    """dh = dy = 1, ``M`` data points projected onto the neuron's hyperplane (``W1, b1`` fixed), Clarke
    multipliers ``s_i`` in (0.2, 0.8) and residuals ``r`` planted so the point is exactly first-order
    stationary with ``w r_i > 0`` on the kinks (no flat ray: ``L = 0``); ``Y = yhat - r``."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, dx))
    w1, b1 = rng.standard_normal(dx), 0.3 * rng.standard_normal()
    on = rng.choice(m, M, replace=False)
    X[on] -= np.outer((X[on] @ w1 + b1) / (w1 @ w1), w1)  # onto w1 . x + b1 = 0
    net = TwoLayerNet(w1[None, :], [b1], [[1.0 + rng.random()]], [0.1])
    N = X @ w1 + b1
    N[on] = 0.0
    s = np.where(N > 0, 1.0, 0.0)
    s[on] = rng.uniform(0.2, 0.8, M)
    Xbar = np.hstack([X, np.ones((m, 1))])
    w = float(net.W2[0, 0])
    G = np.column_stack([np.ones(m), np.maximum(N, 0.0), (s * w)[:, None] * Xbar])
    r = plant_residuals(G, on, rng.uniform(0.5, 1.5, M) * np.sign(w), rng, residual_scale * np.sqrt(m))
    yhat = np.maximum(X @ w1 + b1, 0.0) * w + 0.1
    return {"net": net, "X": X, "Y": (yhat - r)[:, None], "on": on, "s": s[on]}


def stationary_instance(m: int, dx: int, dh: int, seed: int = 0, residual_scale: float = 0.1) -> dict:
    """A random ReLU net (no data on kinks, ``M = 0``) made exactly first-order stationary by planting
    ``r`` orthogonal to every gradient column ``[1, O, (h'(N_k) w_k) xbar]``; ``|r| = residual_scale sqrt(m)``.
    The full check then runs every phase (the benign case). Needs ``m > dh (dx + 2) + 1``."""
    X, _ = gaussian_data(m, dx, 1, seed)
    net = random_net(dx, dh, 1, seed)
    fwd_N = X @ net.W1.T + net.b1
    O = np.maximum(fwd_N, 0.0)
    Xbar = np.hstack([X, np.ones((m, 1))])
    cols = [np.ones((m, 1)), O] + [((fwd_N[:, k] > 0) * net.W2[0, k])[:, None] * Xbar for k in range(dh)]
    r = plant_residuals(np.hstack(cols), np.zeros(0, int), np.zeros(0), np.random.default_rng(seed + 2),
                        residual_scale * np.sqrt(m))
    yhat = O @ net.W2.T + net.b2
    return {"net": net, "X": X, "Y": yhat - r[:, None]}


# ---------------------------------------------------------------------------------------- machine

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas_info() -> str:
    """NumPy's BLAS as NumPy reports it (name, version, configuration)."""
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{cfg.get('name')} {cfg.get('version')} ({cfg.get('openblas configuration', '').strip()})"
    except Exception:  # noqa: BLE001 - older NumPy
        return "unknown"


def machine_info() -> dict:
    import scipy

    info = {"date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu_model(),
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "blas": blas_info(), "threads": os.environ.get("OPENBLAS_NUM_THREADS"), "torch": torch_version()}
    try:
        info["git"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                     text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True,
                               text=True, check=True).stdout.strip()
        info["git"] += " (src/ has uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        info["git"] = "unknown"
    return info


def torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def run_probe(spec: dict, workdir: Path, name: str, timeout: float) -> dict:
    """Run ``benchmarks/probe.py`` on ``spec`` in a fresh interpreter (same venv); return its stage records
    by stage label, plus ``"error"`` when it failed or ran past ``timeout`` seconds (the stages finished
    before that are kept)."""
    spec_path = workdir / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, str(Path(__file__).with_name("probe.py")), str(spec_path)]
    error = None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        out = proc.stdout
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            error = f"exit {proc.returncode}: {lines[-1] if lines else ''}"
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        error = f"timed out after {timeout:.0f} s"
    records = {}
    for line in out.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            records[rec.pop("stage")] = rec
    if error:
        records["error"] = error
    return records


def planted_minimum(m: int, dx: int, dh: int, dy: int = 1, kink_pairs: int = 0, seed: int = 0,
                    residual_scale: float = 0.1, cache: Path | None = None) -> dict:
    """A random ReLU net made exactly first-order stationary (the benign case of issue 15), with
    ``dy`` outputs and ``kink_pairs`` data points moved onto kinks (pair ``j`` on neuron ``j % dh``).

    The residuals ``r`` (m x dy) solve the stationarity equations ``[1, O]' r = 0`` and, per neuron,
    ``Xbar' (s_k * (r w_k)) = 0`` with ``s_ik = h'(N_ik)`` off the kinks and a Clarke multiplier in
    (0.2, 0.8) on them, whose rows are fixed with ``a_ik = w_k . r_i`` in (0.5, 1.5) (a convex kink,
    no flat ray); the rest is the minimum-norm solution plus a random null-space component of norm
    ``residual_scale sqrt(m)`` (LSQR on the constraint operator, refined once, so that nothing of
    size m x dy x q is formed). Needs ``m dy`` well above ``dy (dh + 1) + dh (dx + 1)``; at
    (1000, 10, 10000) this means ``dy >= 2``. With ``cache`` (a folder) the instance is kept there
    as an ``.npz`` file (the LSQR solves take minutes at that size).
    """
    args = (m, dx, dh, dy, kink_pairs, seed, residual_scale)
    path = None if cache is None else Path(cache) / ("planted_" + "_".join(map(str, args)) + ".npz")
    if path is not None and path.exists():
        z = np.load(path)
        return {"net": TwoLayerNet(z["W1"], z["b1"], z["W2"], z["b2"]), "X": z["X"], "Y": z["Y"],
                "kinks": (z["rows"], z["ks"]), "stationarity": float(z["stationarity"])}
    inst = _planted_minimum(*args)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        net = inst["net"]
        np.savez(path, W1=net.W1, b1=net.b1, W2=net.W2, b2=net.b2, X=inst["X"], Y=inst["Y"], rows=inst["kinks"][0],
                 ks=inst["kinks"][1], stationarity=inst["stationarity"])
    return inst


def _planted_minimum(m: int, dx: int, dh: int, dy: int, kink_pairs: int, seed: int, residual_scale: float) -> dict:
    from scipy.sparse.linalg import LinearOperator, lsqr

    rng = np.random.default_rng(seed)
    X, _ = gaussian_data(m, dx, dy, seed)
    net = random_net(dx, dh, dy, seed)
    W1, b1, W2 = np.array(net.W1), np.array(net.b1), np.array(net.W2)
    rows = rng.choice(m, kink_pairs, replace=False)
    ks = np.arange(kink_pairs) % dh
    for i, k in zip(rows, ks):  # onto w_k . x + b_k = 0
        X[i] -= (X[i] @ W1[k] + b1[k]) / (W1[k] @ W1[k]) * W1[k]
    N = X @ W1.T + b1
    N[rows, ks] = 0.0
    O = np.maximum(N, 0.0)
    s = (N > 0).astype(float)
    s[rows, ks] = rng.uniform(0.2, 0.8, kink_pairs)
    Xbar = np.hstack([X, np.ones((m, 1))])
    C0 = np.hstack([np.ones((m, 1)), O])
    fixed = np.zeros((m, dy))
    for i, k in zip(rows, ks):
        w = W2[:, k]
        fixed[i] = rng.uniform(0.5, 1.5) * w / (w @ w)
    free = np.setdiff1d(np.arange(m), rows)
    nf, q0, q1 = free.size, dy * (dh + 1), dh * (dx + 1)

    def constraints(r):  # (m, dy) -> the q stationarity equations
        return np.concatenate([(C0.T @ r).ravel(), (Xbar.T @ (s * (r @ W2))).ravel()])

    def adjoint(c):  # q -> (m, dy)
        return C0 @ c[:q0].reshape(dh + 1, dy) + (s * (Xbar @ c[q0:].reshape(dx + 1, dh))) @ W2.T

    def lift(x):
        r = np.zeros((m, dy))
        r[free] = x.reshape(nf, dy)
        return r

    A = LinearOperator((q0 + q1, nf * dy), matvec=lambda x: constraints(lift(x)),
                       rmatvec=lambda c: adjoint(c)[free].ravel(), dtype=float)

    def min_norm(b):  # the minimum-norm x with A x = b, refined once on its own residual
        x = lsqr(A, b, atol=1e-16, btol=1e-16, iter_lim=5000)[0]
        return x + lsqr(A, b - A @ x, atol=1e-16, btol=1e-16, iter_lim=5000)[0]

    x = min_norm(-constraints(fixed))
    noise = rng.standard_normal(nf * dy)
    noise -= min_norm(A @ noise)
    x += noise * (residual_scale * np.sqrt(m) / np.linalg.norm(noise))
    r = fixed + lift(x)
    yhat = O @ W2.T + np.array(net.b2)
    rel = np.linalg.norm(constraints(r)) / (np.linalg.norm(r) * np.linalg.norm(Xbar))
    return {"net": net, "X": X, "Y": yhat - r, "kinks": (rows, ks), "stationarity": rel}
