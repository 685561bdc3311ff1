"""Per-sample losses ``l(yhat, y)``, convex and C2 in ``yhat``, and the risk (DESIGN.md section 1).

Each loss gives the per-sample value (m,), gradient ``r_i`` (m, dy) and Hessian ``H_i``
(m, dy, dy), and validates/converts its labels once, before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import expit, log_softmax, softmax

from .model import TwoLayerNet, as_float_array, forward

__all__ = ["Loss", "get_loss", "risk", "reduction_weight", "LOSSES", "weight_norm_sq", "interpolates",
           "INTERPOLATION_ULPS"]

Array = np.ndarray


@dataclass(frozen=True)
class Loss:
    """A per-sample loss. ``prepare(Y, dy)`` validates labels and returns the array the others take."""

    name: str
    value: Callable[[Array, Array], Array]
    grad: Callable[[Array, Array], Array]
    hess: Callable[[Array, Array], Array]
    prepare: Callable[[Array, int], Array]
    zero_at_targets: bool = False  # l >= 0 with l(y, y) = 0: outputs equal to the targets are a global minimum


def _prepare_regression(Y, dy: int) -> Array:
    Y = as_float_array(Y, "Y")
    if Y.ndim == 1 and dy == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or Y.shape[1] != dy:
        raise ValueError(f"`Y` must have shape (m, {dy}) to match the network's {dy} output(s), got {Y.shape}")
    return Y


def _squared_value(out, Y):
    return 0.5 * np.sum((out - Y) ** 2, axis=1)


def _squared_hess(out, Y):
    m, dy = out.shape
    return np.broadcast_to(np.eye(dy), (m, dy, dy))


def _prepare_logistic(Y, dy: int) -> Array:
    if dy != 1:
        raise ValueError(f"loss 'logistic' needs a network with 1 output, this one has dy = {dy}")
    Y = as_float_array(Y, "Y")
    if Y.ndim == 2 and Y.shape[1] == 1:
        Y = Y[:, 0]
    if Y.ndim != 1:
        raise ValueError(f"`Y` for loss 'logistic' must have shape (m,) or (m, 1), got {Y.shape}")
    labels = set(np.unique(Y).tolist())
    if labels <= {-1.0, 1.0}:
        return Y[:, None]
    if labels <= {0.0, 1.0}:
        return (2.0 * Y - 1.0)[:, None]
    raise ValueError(f"`Y` for loss 'logistic' must hold labels in {{-1, +1}} or {{0, 1}}, got values {sorted(labels)[:5]}")


def _logistic_value(out, Y):
    return np.logaddexp(0.0, -Y * out)[:, 0]


def _logistic_grad(out, Y):
    return -Y * expit(-Y * out)


def _logistic_hess(out, Y):
    p = expit(out)
    return (p * (1.0 - p))[:, :, None]


def _prepare_cross_entropy(Y, dy: int) -> Array:
    if dy < 2:
        raise ValueError(f"loss 'cross_entropy' needs a network with >= 2 outputs, this one has dy = {dy}")
    Y = as_float_array(Y, "Y")
    if Y.ndim == 2 and Y.shape[1] == 1:
        Y = Y[:, 0]
    if Y.ndim == 1:
        if np.any(Y != np.round(Y)) or np.any(Y < 0) or np.any(Y >= dy):
            raise ValueError(f"`Y` for loss 'cross_entropy' must hold integer class labels in 0..{dy - 1}")
        return np.eye(dy)[Y.astype(int)]
    if Y.ndim == 2 and Y.shape[1] == dy:
        if not (np.all((Y == 0) | (Y == 1)) and np.all(Y.sum(axis=1) == 1)):
            raise ValueError("`Y` for loss 'cross_entropy' given as a matrix must be one-hot (one 1 per row)")
        return Y
    raise ValueError(f"`Y` for loss 'cross_entropy' must have shape (m,) labels or (m, {dy}) one-hot, got {Y.shape}")


def _ce_value(out, Y):
    return -np.sum(Y * log_softmax(out, axis=1), axis=1)


def _ce_grad(out, Y):
    return softmax(out, axis=1) - Y


def _ce_hess(out, Y):
    p = softmax(out, axis=1)
    return np.einsum("ij,jk->ijk", p, np.eye(out.shape[1])) - p[:, :, None] * p[:, None, :]


LOSSES = {
    "squared": Loss("squared", _squared_value, lambda out, Y: out - Y, _squared_hess, _prepare_regression,
                    zero_at_targets=True),
    "logistic": Loss("logistic", _logistic_value, _logistic_grad, _logistic_hess, _prepare_logistic),
    "cross_entropy": Loss("cross_entropy", _ce_value, _ce_grad, _ce_hess, _prepare_cross_entropy),
}


def get_loss(loss) -> Loss:
    """A :class:`Loss` from a name, a ``Loss``, or a ``(value, grad, hess)`` triple of callables.

    A user-supplied triple takes ``(out, Y)`` with ``out`` of shape (m, dy) and returns
    per-sample values (m,), gradients (m, dy) and Hessians (m, dy, dy); the Hessians must be
    positive semidefinite (the loss must be convex in its first argument).
    """
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(f"`loss` must be one of {sorted(LOSSES)} or a (value, grad, hess) triple, got {loss!r}")
        return LOSSES[loss]
    if isinstance(loss, (tuple, list)) and len(loss) == 3 and all(callable(f) for f in loss):
        return Loss("custom", *loss, prepare=_prepare_regression)
    raise TypeError(f"`loss` must be a name, a Loss, or a (value, grad, hess) triple of callables, got {loss!r}")


def reduction_weight(reduction: str, m: int) -> float:
    if reduction == "sum":
        return 1.0
    if reduction == "mean":
        return 1.0 / m
    raise ValueError(f"`reduction` must be 'sum' or 'mean', got {reduction!r}")


def weight_norm_sq(net: TwoLayerNet) -> float:
    return float(net.as_direction().norm() ** 2)


def risk(net: TwoLayerNet, X: Array, Y: Array, loss: Loss, weight: float = 1.0, weight_decay: float = 0.0) -> float:
    """``R(z) = weight * sum_i l(Y(x_i), y_i) + (weight_decay / 2) |z|^2``; ``Y`` already prepared."""
    out = forward(net, X).out
    value = weight * float(np.sum(loss.value(out, Y)))
    if weight_decay:
        value += 0.5 * weight_decay * weight_norm_sq(net)
    return value


INTERPOLATION_ULPS = 64.0


def interpolates(out: np.ndarray, Y: np.ndarray) -> bool:
    """Every ``|out_i - y_i| <= 64 eps (|out_i| + |y_i|)``: equal up to the rounding of a forward pass."""
    Y = np.asarray(Y, float).reshape(out.shape)
    return bool(np.all(np.abs(out - Y) <= INTERPOLATION_ULPS * np.finfo(float).eps * (np.abs(out) + np.abs(Y))))
