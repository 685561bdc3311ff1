"""Risk differences below the rounding of the risk (DESIGN.md section 8.5).

``R(z') - R(z)`` computed as the difference of two rounded totals carries an error of about
``eps * R``, which hides any change smaller than that. Here the change is computed per sample from
the change of the outputs ``delta_i = out'_i - out_i`` with formulas whose rounding error is
relative to the change itself:

- quadratic losses (``squared``, ``mse``): ``l(o + delta) - l(o) = r . delta + 1/2 delta' H delta``
  exactly, ``r``, ``H`` the loss's own gradient and (constant) Hessian at ``o``;
- ``logistic``: with ``a = -y o``, ``sigma = expit(a)`` and ``da = -y delta``,
  ``softplus(a + da) - softplus(a) = log1p(sigma expm1(da)) = r delta + sigma expm1mx(da) + log1pmx(s)``,
  ``s = sigma expm1(da)``, ``expm1mx(x) = e^x - 1 - x``, ``log1pmx(s) = log(1 + s) - s``;
- ``cross_entropy``: with ``p = softmax(o)``, ``lse(o + delta) - lse(o) - y . delta = r . delta +
  p . expm1mx(delta) + log1pmx(s)``, ``s = p . expm1(delta)``;
- any other loss: per-sample subtraction ``l(o + delta) - l(o)``, accurate only to the rounding of
  the per-sample values (still better than subtracting totals).

``expm1mx`` and ``log1pmx`` use their Taylor series near 0, so every term is accurate relative to
its own size; the samples' terms are summed exactly (``math.fsum``). For logistic / cross-entropy
samples whose output moves by 1 or more the per-sample difference is taken directly: it is then
well conditioned. :func:`output_change` gives ``delta`` accurate relative to the move of the
weights, rather than the difference of two rounded forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.special import expit, softmax

from .augmented import product_chunks, row_block, row_chunks
from .losses import Loss
from .model import TwoLayerNet, forward

__all__ = ["loss_change", "loss_change_noise", "noise_bound", "combine_output_change", "activation_change",
           "output_change", "risk_change", "risk_change_and_noise", "output_size",
           "abs_times", "decay_change", "QUADRATIC_LOSSES", "NOISE_ULPS"]

#: loss names whose per-sample loss is a quadratic in the output (constant Hessian)
QUADRATIC_LOSSES = ("squared", "mse")
#: losses with a per-sample formula accurate relative to the change (others: per-sample subtraction)
_FORMULA_LOSSES = QUADRATIC_LOSSES + ("logistic", "cross_entropy")
#: the factor of ``eps`` in :func:`loss_change_noise`: room for the few roundings of each term
NOISE_ULPS = 64.0
_EPS = float(np.finfo(float).eps)

# Taylor coefficients: e^x - 1 - x = sum_{n>=2} x^n / n!, log(1 + s) - s = sum_{n>=2} (-1)^(n+1) s^n / n
_EXP_COEF = [1.0 / math.factorial(n) for n in range(2, 22)]  # |x| <= 1/2: 0.5^22 / 22! < 1e-27
_LOG_COEF = [(-1.0) ** (n + 1) / n for n in range(2, 34)]  # |s| <= 1/4: 0.25^34 / 34 < 1e-21
_EXP_SERIES, _LOG_SERIES = 0.5, 0.25


def _horner_tail(x: np.ndarray, coef: list[float]) -> np.ndarray:
    """``sum_j coef[j] x^(j+2)`` by Horner's rule."""
    acc = np.full_like(x, coef[-1])
    for c in reversed(coef[:-1]):
        acc = acc * x + c
    return acc * x * x


def expm1mx(x: np.ndarray) -> np.ndarray:
    """``e^x - 1 - x`` accurate relative to its value (series for ``|x| <= 1/2``)."""
    x = np.asarray(x, dtype=float)
    small = np.abs(x) <= _EXP_SERIES
    return np.where(small, _horner_tail(np.where(small, x, 0.0), _EXP_COEF), np.expm1(x) - x)


def log1pmx(s: np.ndarray) -> np.ndarray:
    """``log(1 + s) - s`` accurate relative to its value (series for ``|s| <= 1/4``), ``s > -1``."""
    s = np.asarray(s, dtype=float)
    small = np.abs(s) <= _LOG_SERIES
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = np.log1p(s) - s
    return np.where(small, _horner_tail(np.where(small, s, 0.0), _LOG_COEF), direct)


def _per_sample_terms(loss: Loss, out: np.ndarray, delta: np.ndarray, Yp: np.ndarray) -> np.ndarray:
    """Terms whose exact sum is ``sum_i l(out_i + delta_i) - l(out_i)`` (any shape; summed by the caller)."""
    if loss.name in QUADRATIC_LOSSES:
        r = np.asarray(loss.grad(out, Yp), dtype=float)
        Hd = np.einsum("icd,id->ic", np.asarray(loss.hess(out, Yp), dtype=float), delta)
        return np.concatenate([(r * delta).ravel(), (0.5 * delta * Hd).ravel()])
    if loss.name == "logistic":
        a, da = -Yp[:, 0] * out[:, 0], -Yp[:, 0] * delta[:, 0]
        sigma = expit(a)
        near = np.abs(da) < 1.0
        dan = np.where(near, da, 0.0)
        s = sigma * np.expm1(dan)
        exact = np.logaddexp(0.0, a + da) - np.logaddexp(0.0, a)
        terms = [np.where(near, sigma * dan, exact), np.where(near, sigma * expm1mx(dan), 0.0),
                 np.where(near, log1pmx(s), 0.0)]
        return np.concatenate(terms)
    if loss.name == "cross_entropy":
        p = softmax(out, axis=1)
        near = np.max(np.abs(delta), axis=1) < 1.0
        dn = np.where(near[:, None], delta, 0.0)
        r = p - Yp
        s = np.sum(p * np.expm1(dn), axis=1)
        exact = loss.value(out + delta, Yp) - loss.value(out, Yp)
        terms = [np.where(near[:, None], r * dn, 0.0).ravel(), np.where(near[:, None], p * expm1mx(dn), 0.0).ravel(),
                 np.where(near, log1pmx(s), exact)]
        return np.concatenate(terms)
    return np.asarray(loss.value(out + delta, Yp), dtype=float) - np.asarray(loss.value(out, Yp), dtype=float)


def loss_change(loss: Loss, out: np.ndarray, out_new: np.ndarray | None, Yp: np.ndarray, weight: float = 1.0, *,
                delta: np.ndarray | None = None) -> float:
    """``weight * sum_i [l(out_new_i, y_i) - l(out_i, y_i)]`` with an error relative to the change, not
    to the loss (module docstring; DESIGN.md section 8.5).

    Args:
        loss: the per-sample loss (recognised by name: ``squared``/``mse``, ``logistic``,
            ``cross_entropy``; other names fall back to per-sample subtraction).
        out, out_new: outputs (m, dy) before and after. ``Yp``: targets prepared by ``loss.prepare``.
        weight: the reduction weight (1 for ``sum``, ``1/m`` for ``mean``).
        delta: ``out_new - out`` when the caller has it more accurately than the subtraction of two
            rounded outputs (:func:`output_change`); ``out_new`` is then ignored and may be None.
    """
    out = np.asarray(out, dtype=float)
    delta = np.asarray(out_new, dtype=float) - out if delta is None else np.asarray(delta, dtype=float)
    if delta.shape != out.shape:
        raise ValueError(f"`out_new`/`delta` must have the shape of `out` {out.shape}, got {delta.shape}")
    return weight * math.fsum(_per_sample_terms(loss, out, delta, np.asarray(Yp, dtype=float)).tolist())


def loss_change_noise(loss: Loss, out: np.ndarray, Yp: np.ndarray, weight: float, out_size: np.ndarray,
                      delta_size: np.ndarray) -> float:
    """A bound on the rounding error of :func:`loss_change` (DESIGN.md section 8.5):

        64 eps weight sum_i [ |r_i| + |H_i| (out_size_i + delta_size_i) ] . delta_size_i,

    where ``out_size`` bounds ``|out|`` and ``delta_size`` bounds ``|delta|`` elementwise (both (m, dy),
    sums of absolute values of the terms that formed them, so the rounding of ``out`` and of ``delta``
    is a few eps of them). The ``|r|`` term covers the rounding of ``delta`` and of each term, the
    ``|H| out_size`` term the rounding of ``r`` (through that of ``out``), the ``|H| delta_size`` term
    that of the second-order part. A loss without a formula of its own adds ``8 eps weight sum |l_i|``
    (per-sample subtraction)."""
    return noise_bound(loss, out, Yp, weight, out_size)(delta_size)


def noise_bound(loss: Loss, out: np.ndarray, Yp: np.ndarray, weight: float,
                out_size: np.ndarray) -> Callable[[np.ndarray], float]:
    """``delta_size -> ``:func:`loss_change_noise` at fixed outputs ``out``: the loss derivatives there
    (and the per-sample term) computed once, for a line search's many trial steps."""
    out = np.asarray(out, dtype=float)
    r = np.abs(np.asarray(loss.grad(out, Yp), dtype=float))
    H = np.abs(np.asarray(loss.hess(out, Yp), dtype=float))
    per_sample = 0.0
    if loss.name not in _FORMULA_LOSSES:
        per_sample = 8.0 * _EPS * weight * math.fsum(np.abs(np.asarray(loss.value(out, Yp), dtype=float)).tolist())

    def bound(delta_size: np.ndarray) -> float:
        size = np.einsum("icd,id->ic", H, out_size + delta_size)
        value = NOISE_ULPS * _EPS * weight * math.fsum(((r + size) * delta_size).ravel().tolist())
        return value + per_sample

    return bound


def activation_change(net: TwoLayerNet, N: np.ndarray, N_new: np.ndarray, T: np.ndarray) -> np.ndarray:
    """``h(N_new) - h(N)`` accurate relative to ``T = N_new - N`` (given, not recomputed): ``h'(N) T`` for
    pairs on the same side of the kink before and after, ``h(N_new) - h(N)`` elsewhere (there ``|N|,
    |N_new| <= |T|``, so the subtraction is exact to ``eps |T|``), read by their indices (usually few)."""
    dO = net.slope(N) * T
    rows, cols = np.nonzero(~(((N > 0) & (N_new > 0)) | ((N < 0) & (N_new < 0))))
    if rows.size:
        dO[rows, cols] = net.activation(N_new[rows, cols]) - net.activation(N[rows, cols])
    return dO


def combine_output_change(dO: np.ndarray, W2_new: np.ndarray, OdW2: np.ndarray, db2: np.ndarray | None,
                          aOdW2: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``delta = dO W2_new' + O dW2' + db2`` from its parts (``OdW2 = O dW2'``), and with ``aOdW2 = |O|
    |dW2|'`` the bound ``|dO| |W2_new|' + |O| |dW2|' + |db2|`` on ``|delta|`` (None without it)."""
    delta = dO @ W2_new.T + OdW2
    size = None if aOdW2 is None else np.abs(dO) @ np.abs(W2_new).T + aOdW2
    if db2 is not None:
        delta = delta + db2
        size = None if size is None else size + np.abs(db2)
    return delta, size


def _output_change(net: TwoLayerNet, new: TwoLayerNet, X: np.ndarray, fwd=None, sizes: bool = True):
    """``(delta, delta_size, fwd, out_size)``: :func:`output_change`, a bound on ``|delta|`` elementwise
    (the sum of the absolute values of its terms), the forward pass at ``net`` (``fwd`` when the caller
    has it) and :func:`output_size` at ``net`` (the sizes None without ``sizes``). After that pass, a
    chunk of rows at a time (``T`` and ``N'`` from one product with the chunk of ``Xbar``,
    :func:`~sospcheck.augmented.product_chunks`): no (m, dh) array is formed."""
    fwd = forward(net, X) if fwd is None else fwd
    m, dy = fwd.out.shape
    dh = net.dh
    dW2 = new.W2 - net.W2
    db2 = new.b2 - net.b2 if net.has_b2 else None
    out_size, aOdW2 = output_size(net, fwd.O, dW2) if sizes else (None, None)
    delta = np.empty((m, dy))
    size = np.empty((m, dy)) if sizes else None
    ZZ = np.vstack([new.Z - net.Z, new.Z]).T
    for rows in product_chunks(fwd.Xbar, 4 * dh):
        TN = row_block(fwd.Xbar, rows) @ ZZ  # [T N'] on these rows
        dO = activation_change(net, fwd.N[rows], TN[:, dh:], TN[:, :dh])
        delta[rows], s = combine_output_change(dO, new.W2, fwd.O[rows] @ dW2.T, db2, aOdW2[rows] if sizes else None)
        if sizes:
            size[rows] = s
    return delta, size, fwd, out_size


def output_change(net: TwoLayerNet, new: TwoLayerNet, X: np.ndarray) -> np.ndarray:
    """``out(new) - out(net)`` on the data (m, dy), accurate relative to the weights' move.

    With ``T = Xbar (Z' - Z)'`` the activations change by :func:`activation_change`; then
    ``delta = W2' dO + (W2' - W2) O + (b2' - b2)``.
    """
    return _output_change(net, new, X, sizes=False)[0]


def output_size(net: TwoLayerNet, O: np.ndarray, dW2: np.ndarray | None = None):
    """``|W2| |O_i| + |b2|`` elementwise (m, dy): what the rounding of the outputs is relative to. With
    ``dW2`` (a move of ``W2``), the pair ``(size, |O| |dW2|')`` from one pass over ``O``."""
    both = abs_times(O, net.W2 if dW2 is None else np.vstack([net.W2, dW2]))
    size = both[:, :net.dy] + np.abs(net.b2) if net.has_b2 else both[:, :net.dy]
    return size if dW2 is None else (size, both[:, net.dy:])


def abs_times(O: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``|O| |W|'`` (m, dy), a chunk of rows at a time: no (m, dh) temporary."""
    out = np.empty((O.shape[0], W.shape[0]))
    aW = np.abs(W).T
    for rows in row_chunks(O.shape[0], O.shape[1]):
        out[rows] = np.abs(O[rows]) @ aW
    return out


def decay_change(weight_decay: float, z: np.ndarray, dz: np.ndarray) -> tuple[float, float]:
    """``lam (z . dz + |dz|^2 / 2)`` summed exactly, and 64 eps times the sum of its terms' sizes."""
    terms = z * dz + 0.5 * dz * dz
    value = weight_decay * math.fsum(terms.tolist())
    noise = NOISE_ULPS * _EPS * weight_decay * math.fsum((np.abs(z * dz) + 0.5 * dz * dz).tolist())
    return value, noise


def risk_change_and_noise(net: TwoLayerNet, new: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss,
                          weight: float = 1.0, weight_decay: float = 0.0, fwd=None) -> tuple[float, float]:
    """``R(new) - R(net)`` as :func:`risk_change`, and a bound on its rounding error
    (:func:`loss_change_noise`, plus ``64 eps lam sum |z_j dz_j| + dz_j^2 / 2`` for weight decay).
    ``fwd``: the forward pass at ``net`` when the caller has it."""
    return _risk_change(net, new, X, Yp, loss, weight, weight_decay, fwd, True)


def risk_change(net: TwoLayerNet, new: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float = 1.0,
                weight_decay: float = 0.0) -> float:
    """``R(new) - R(net)`` below the rounding of ``R``: :func:`loss_change` with :func:`output_change`,
    plus ``lam (z . dz + |dz|^2 / 2)`` for weight decay (``dz = z' - z``)."""
    return _risk_change(net, new, X, Yp, loss, weight, weight_decay, None, False)[0]


def _risk_change(net, new, X, Yp, loss, weight, weight_decay, fwd, with_noise: bool) -> tuple[float, float | None]:
    """The value, and with ``with_noise`` its rounding bound (else None: the sizes are not formed)."""
    delta, size, fwd, out_size = _output_change(net, new, X, fwd, sizes=with_noise)
    value = loss_change(loss, fwd.out, None, Yp, weight, delta=delta)
    noise = loss_change_noise(loss, fwd.out, Yp, weight, out_size, size) if with_noise else None
    if weight_decay:
        z = net.as_direction().vector()
        dv, dn = decay_change(weight_decay, z, new.as_direction().vector() - z)
        value, noise = value + dv, None if noise is None else noise + dn
    return value, noise
