"""Line-search verification of a descent direction on the true risk (DESIGN.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import validity_radius
from .model import Direction
from .point import Point

__all__ = ["Verification", "verify_descent"]


@dataclass(frozen=True)
class Verification:
    """``R(z + step * d) = loss_after < loss_before`` by more than ``noise`` if ``verified``.

    ``slope`` and ``curvature`` are the local model's ``first(d)`` and ``second(d)`` for the unit
    direction ``d``: ``R(z + t d) = R(z) + slope t + curvature t^2 + o(t^2)``; the model's output
    part is exact for ``t < validity_radius``.
    """

    verified: bool
    step: float
    decrease: float
    loss_before: float
    loss_after: float
    slope: float
    curvature: float
    validity_radius: float
    noise: float
    n_evaluations: int


def _risk_along(pt: Point, d: Direction, T: np.ndarray):
    """``t -> R(z + t d)`` from ``N + t T`` (``T = Xbar dZ'``): the same pre-activations as a forward
    pass of the moved weights, without the ``m x d x dh`` product per trial step."""
    net, fwd = pt.net, pt.fwd
    zv, dv = net.as_direction().vector(), d.vector()

    def value(t: float) -> float:
        out = net.activation(fwd.N + t * T) @ (net.W2 + t * d.W2).T
        if net.has_b2:
            out = out + (net.b2 + t * d.b2)
        v = pt.weight * float(np.sum(pt.loss.value(out, pt.Y)))
        if pt.weight_decay:
            v += 0.5 * pt.weight_decay * float(np.sum((zv + t * dv) ** 2))
        return v

    return value


def verify_descent(pt: Point, d: Direction, boundary: np.ndarray, max_halvings: int = 100) -> Verification:
    """Evaluate ``R(z + t d)`` for ``t = t0 2^-j``, keep the best decrease.

    ``t0 = max(1, |z|)``, capped at 8x the step the local model suggests (the validity radius, or
    the minimiser ``-slope / (2 curvature)`` of a convex first-order model) to save evaluations.

    Stops once a verified decrease has been found and halving ``t`` only makes it smaller. The
    trial steps reuse ``N + t T``; the chosen step is then confirmed by a full forward pass.
    ``noise = 1e-12 |R(z)| + 1e-300`` is the floating-point margin a decrease must exceed: relative to
    the whole risk (the weight-decay term included), and positive even where ``R(z) = 0``.
    """
    d = d.normalized()
    R0 = pt.value
    T = pt.fwd.Xbar @ d.Z.T
    slope, curvature = pt.local_terms(d, boundary, T)
    radius = validity_radius(pt.fwd.N, boundary, T)
    risk_along = _risk_along(pt, d, T)
    noise = 1e-12 * abs(R0) + 1e-300
    t = max(1.0, pt.net.as_direction().norm())
    suggested = radius
    if slope < 0 < curvature:
        suggested = min(suggested, -slope / (2.0 * curvature))
    if np.isfinite(suggested) and suggested > 0:
        t = min(t, 8.0 * suggested)
    best_t, best_dec, n = 0.0, -np.inf, 0
    for _ in range(max_halvings):
        n += 1
        dec = R0 - risk_along(t)
        if dec > best_dec:
            best_t, best_dec = t, dec
        elif best_dec > noise:
            break
        t *= 0.5
    if best_dec > noise:
        # the step found is confirmed by an independent full forward pass of the moved weights
        n += 1
        best_dec = R0 - pt.risk_at(pt.net.perturbed(d, best_t))
    verified = bool(best_dec > noise)
    return Verification(
        verified, best_t, float(best_dec), R0, R0 - float(best_dec), slope, curvature, radius, noise, n
    )
