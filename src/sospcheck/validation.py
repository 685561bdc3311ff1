"""Everything a check's arguments must satisfy, tested before any work (DESIGN.md section 1).

Errors name the argument and what was expected (``ValueError`` / ``TypeError``), in one line.
"""

from __future__ import annotations

import math

import numpy as np

from .augmented import abs_max, frobenius_norm, transpose_times
from .losses import Loss, get_loss, reduction_weight
from .model import Forward, TwoLayerNet, as_float_array, check_size, forward

__all__ = ["validate_inputs", "validate_with_forward",
           "validate_features", "validate_targets", "validate_engine", "validate_progress",
           "torch_device", "check_finite_point"]


def validate_inputs(net, X, Y, loss, reduction: str, weight_decay) -> tuple[np.ndarray, np.ndarray, Loss, float, float]:
    """Check everything before any work; return ``X``, prepared ``Y``, the loss, weight and decay.

    Also refuses a point where the risk or its derivatives overflow float64 (:func:`check_finite_point`).
    """
    return validate_with_forward(net, X, Y, loss, reduction, weight_decay)[:5]


def validate_with_forward(net, X, Y, loss, reduction: str, weight_decay) -> tuple[np.ndarray, np.ndarray, Loss, float,
                                                                                  float, Forward]:
    """:func:`validate_inputs` and the forward pass of ``net`` on ``X`` its overflow check made (the check's
    point reuses it)."""
    if not isinstance(net, TwoLayerNet):
        raise TypeError(f"`net` must be a sospcheck.TwoLayerNet, got {type(net).__name__}")
    X = validate_features(X, net.dx)
    # the forward pass forms (m, dh) pre-activations and the loss (m, dy, dy) Hessians
    check_size((X.shape[0], net.dh), "X", "pre-activations X Z'")
    check_size((X.shape[0], net.dy, net.dy), "X", "per-sample loss Hessians")
    Yp, lossobj, weight, lam = validate_targets(X, Y, loss, reduction, weight_decay, net.dy)
    fwd = check_finite_point(net, X, Yp, lossobj, weight, lam)
    return X, Yp, lossobj, weight, lam, fwd


def validate_features(X, dx: int) -> np.ndarray:
    """``X`` as a finite (m, dx) float array with ``m >= 1``: a read-only view of the caller's array when it
    is float64 already (no copy of the data, and nothing in the check can change it)."""
    X = as_float_array(X, "X", 2, copy=False).view()
    X.flags.writeable = False
    if X.shape[0] == 0:
        raise ValueError("`X` is empty: the check needs at least one data point")
    if X.shape[1] != dx:
        raise ValueError(f"`X` has {X.shape[1]} feature column(s) but W1 expects dx = {dx}")
    return X


def validate_targets(X: np.ndarray, Y, loss, reduction: str, weight_decay,
                     dy: int) -> tuple[np.ndarray, Loss, float, float]:
    """The prepared targets (one row per row of ``X``), the loss, the reduction's weight and the decay."""
    lossobj = get_loss(loss)
    Yp = lossobj.prepare(Y, dy)
    if Yp.shape[0] != X.shape[0]:
        raise ValueError(f"`Y` has {Yp.shape[0]} row(s) but `X` has {X.shape[0]}")
    weight = reduction_weight(reduction, X.shape[0])
    if isinstance(weight_decay, (bool, np.bool_)):
        raise TypeError(f"`weight_decay` must be a number, got {weight_decay!r}")
    try:
        lam = float(weight_decay)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"`weight_decay` must be a number, got {weight_decay!r}") from exc
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"`weight_decay` must be a finite number >= 0, got {weight_decay!r}")
    return Yp, lossobj, weight, lam


def _refuse_overflow(checks: list, X: np.ndarray, z2: float, lam: float) -> None:
    """Raise for the first ``(what, quantity)`` that is not finite."""
    for what, quantity in checks:
        if not np.all(np.isfinite(quantity)):
            raise ValueError(f"the loss or its derivatives overflow at this point: {what} is not finite in float64 "
                             f"(largest |X| entry {np.max(np.abs(X)):.3g}, weight norm |z| {math.sqrt(z2):.3g}, "
                             f"weight_decay {lam:.3g}); rescale the data or the weights")


def check_finite_point(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float,
                       lam: float) -> Forward:
    """Raise one ``ValueError`` when the outputs, the risk, its derivatives or their squares overflow
    float64 at ``net``; the check would otherwise go on with infinities (norms square their entries).
    Returns the forward pass it made.

    The second-order size is ``m (max|H_i| (max|o_i| + s_hi |W2| max|xbar_i|)^2 + max|r_i| s_hi max|xbar_i|
    + max|xbar_i|^2) + lam``, a bound on the entries of the Hessian blocks and of the data Gram matrix.
    A custom loss whose derivatives have the wrong shape is left to the check, which names the loss.
    """
    # overflow is reported below, in one line, instead of as warnings (Python floats multiply to inf too,
    # while their ** raises)
    with np.errstate(all="ignore"):
        z2 = sum(float(np.sum(np.square(a))) for a in (net.W1, net.b1, net.W2, net.b2) if a is not None)
        fwd = forward(net, X)
        _refuse_overflow([("the network's outputs on `X`", fwd.out), ("the squared weight norm |z|^2", z2),
                          ("the weight decay term (weight_decay/2 |z|^2 and its gradient)", lam * lam * z2 + lam * z2)],
                         X, z2, lam)
        m, dy = fwd.out.shape
        value = weight * np.sum(np.asarray(loss.value(fwd.out, Yp), dtype=float))
        r = weight * np.asarray(loss.grad(fwd.out, Yp), dtype=float)
        Hl = weight * np.asarray(loss.hess(fwd.out, Yp), dtype=float)
        if r.shape != (m, dy) or Hl.shape != (m, dy, dy):
            return fwd
        s_hi = max(net.s_plus, net.s_minus)
        xmax = abs_max(fwd.Xbar)
        reach = abs_max(fwd.O) + s_hi * float(np.linalg.norm(net.W2)) * xmax
        second = m * (float(np.max(np.abs(Hl))) * reach * reach + float(np.max(np.abs(r))) * s_hi * xmax + xmax * xmax) + lam
        _refuse_overflow([("the loss", value), ("its gradient in the outputs, squared", np.sum(r**2)),
                          ("its Hessian in the outputs", Hl),
                          ("the gradient in the weights, squared",
                           np.sum((r.T @ fwd.O) ** 2) + _hidden_gradient_sq(net, fwd, r)),
                          ("the size of the second derivatives", second)], X, z2, lam)
    return fwd


#: below this, a bound of a sum of squares leaves room for any rounding of it before float64's overflow
_FAR_BELOW_OVERFLOW = 1e300


def _hidden_gradient_sq(net: TwoLayerNet, fwd: Forward, r: np.ndarray) -> float:
    """``|grad_Z|_F^2`` (no decay), or an upper bound of it when that bound is far below overflow:
    ``grad_Z = (h'(N) * r W2)' Xbar``, so ``|grad_Z|_F <= s_hi |r|_F |W2|_F |Xbar|_F`` (four norms, no pass of
    ``dh`` columns over the data); only above ``1e300`` is the gradient itself formed, a chunk of rows at a
    time (as costly as a forward pass). Either way it is finite exactly when the gradient squared is."""
    s_hi = max(net.s_plus, net.s_minus)
    bound = s_hi * float(np.linalg.norm(r)) * float(np.linalg.norm(net.W2)) * frobenius_norm(fwd.Xbar)
    if bound * bound <= _FAR_BELOW_OVERFLOW:
        return bound * bound
    grad_Z = transpose_times(lambda rows: (r[rows] @ net.W2) * net.slope(fwd.N[rows]), fwd.Xbar, 2 * net.dh)
    return float(np.sum(grad_Z**2))


def validate_engine(solver: str, backend: str, device) -> None:
    """``solver`` in {"auto", "dense", "matrix_free"}, ``backend`` in {"numpy", "torch"}; ``device`` only
    with ``backend="torch"`` (see :func:`torch_device`)."""
    if solver not in ("auto", "dense", "matrix_free"):
        raise ValueError(f"`solver` must be 'auto', 'dense' or 'matrix_free', got {solver!r}")
    if backend not in ("numpy", "torch"):
        raise ValueError(f"`backend` must be 'numpy' or 'torch', got {backend!r}")
    if backend == "numpy":
        if device is not None:
            raise ValueError(f"`device` {device!r} is used only with backend='torch'; the numpy backend runs on the CPU")
        return
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise ValueError("`backend='torch'` needs PyTorch: pip install 'sospcheck[torch]'") from exc
    if device is not None:
        torch_device(device)


def torch_device(device):
    """``device`` as a ``torch.device`` that exists here: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (the
    Hessian products run in float64, which other device types lack); a ``ValueError`` naming it otherwise."""
    import torch

    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"`device` must be a string such as 'cpu' or 'cuda:0', got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"`device` must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise ValueError(f"`device` {device!r} is not available: PyTorch sees {count} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"`device` must be 'cpu', 'cuda' or 'cuda:N' (float64 is needed), got {device!r}")
    return dev


def validate_progress(progress) -> None:
    """``progress`` is None or a callable ``progress(phase, done, total)``."""
    if progress is not None and not callable(progress):
        raise TypeError(f"`progress` must be a callable progress(phase, done, total) or None, got "
                        f"{type(progress).__name__} {progress!r:.40}")
