"""Line-search verification of a descent direction on the true risk (DESIGN.md sections 4 and 8.5)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .geometry import validity_radius
from .augmented import row_chunks
from .loss_change import (_EPS, NOISE_ULPS, activation_change, combine_output_change, loss_change,
                          noise_bound, output_size, risk_change_and_noise)
from .model import Direction
from .point import Point

__all__ = ["Verification", "verify_descent", "VerifiedDirections", "remembered_descent"]

@dataclass(frozen=True)
class Verification:
    """``R(z + step * d) - R(z) = -decrease`` with ``decrease > noise`` if ``verified``.

    ``decrease`` is computed from the change of each output (:mod:`sospcheck.loss_change`), not as the
    difference of two rounded totals, and ``noise`` bounds its rounding error; ``loss_after`` is
    ``loss_before - decrease``. ``slope`` and ``curvature`` are the local model's ``first(d)`` and
    ``second(d)`` for the unit direction ``d``: ``R(z + t d) = R(z) + slope t + curvature t^2 + o(t^2)``;
    the model's output part is exact for ``t < validity_radius``.
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


def _change_along(pt: Point, d: Direction, T: np.ndarray):
    """``t -> (R(z + t d) - R(z), noise)`` from ``N + t T`` (``T = Xbar dZ'``), below the rounding of ``R``
    (DESIGN.md 8.5): the outputs change by ``delta = (W2 + t dW2) dO + t dW2 O + t db2`` with ``dO`` the
    activations' change (:func:`~sospcheck.loss_change.activation_change`), and the risk by
    :func:`~sospcheck.loss_change.loss_change` of ``delta``; ``noise`` bounds the rounding error
    (:func:`~sospcheck.loss_change.loss_change_noise`). A trial step forms ``delta`` a chunk of rows at a
    time: no (m, dh) array, and no ``m x d x dh`` product."""
    net, fwd = pt.net, pt.fwd
    N, out = fwd.N, fwd.out
    m, dy = out.shape
    dW2, db2 = d.W2, d.b2
    out_size, aOdW2 = output_size(net, fwd.O, dW2)  # |O| read once for both
    noise_at = noise_bound(pt.loss, out, pt.Y, pt.weight, out_size)
    OdW2 = fwd.O @ dW2.T
    chunks = row_chunks(m, 4 * net.dh)
    lam = pt.weight_decay
    if lam:
        zv, dv = net.as_direction().vector(), d.vector()
        zd, azd, dd = math.fsum((zv * dv).tolist()), math.fsum(np.abs(zv * dv).tolist()), math.fsum((dv * dv).tolist())

    def change(t: float) -> tuple[float, float]:
        W2_new, tOdW2, taOdW2 = net.W2 + t * dW2, t * OdW2, t * aOdW2
        tdb2 = t * db2 if net.has_b2 else None
        delta, size = np.empty((m, dy)), np.empty((m, dy))
        for rows in chunks:
            tT = t * T[rows]
            dO = activation_change(net, N[rows], N[rows] + tT, tT)
            delta[rows], size[rows] = combine_output_change(dO, W2_new, tOdW2[rows], tdb2, taOdW2[rows])
        value = loss_change(pt.loss, out, None, pt.Y, pt.weight, delta=delta)
        noise = noise_at(size)
        if lam:
            value += lam * math.fsum([t * zd, 0.5 * t * t * dd])
            noise += NOISE_ULPS * _EPS * lam * (t * azd + 0.5 * t * t * dd)
        return value, noise

    return change


def _halving_search(change_at, t: float, max_halvings: int) -> tuple[float, float, float, int]:
    """``(best_t, best_decrease, its_noise, evaluations)`` over ``t, t/2, ...``: stops once a decrease above
    its noise has been found and halving only makes it smaller."""
    best_t, best_dec, best_noise, n = 0.0, -np.inf, 0.0, 0
    for _ in range(max_halvings):
        n += 1
        change, noise = change_at(t)
        if -change > best_dec:
            best_t, best_dec, best_noise = t, -change, noise
        elif best_dec > best_noise:
            break
        t *= 0.5
    return best_t, best_dec, best_noise, n


def verify_descent(pt: Point, d: Direction, boundary: np.ndarray, max_halvings: int = 100) -> Verification:
    """Evaluate ``R(z + t d) - R(z)`` for ``t = t0 2^-j``, keep the largest decrease.

    ``t0 = max(1, |z|)``, capped at 8x the step the local model suggests (the validity radius, or
    the minimiser ``-slope / (2 curvature)`` of a convex first-order model) to save evaluations.

    Each difference is computed from the change of the outputs (DESIGN.md 8.5), accurate to a few
    eps of the change itself, and a decrease counts only above ``noise``, the bound on its rounding
    error: decreases far below the rounding of ``R`` itself are verified. Stops once a verified
    decrease has been found and halving ``t`` only makes it smaller. The trial steps reuse ``N + t
    T``; the chosen step is then confirmed independently, from a full forward pass of the moved weights
    (:func:`~sospcheck.loss_change.risk_change_and_noise`): the decrease reported is that one.
    """
    d = d.normalized()
    R0 = pt.value
    T = pt.fwd.Xbar @ d.Z.T
    slope, curvature = pt.local_terms(d, boundary, T)
    radius = validity_radius(pt.fwd.N, boundary, T)
    t = max(1.0, pt.net.as_direction().norm())
    suggested = radius
    if slope < 0 < curvature:
        suggested = min(suggested, -slope / (2.0 * curvature))
    if np.isfinite(suggested) and suggested > 0:
        t = min(t, 8.0 * suggested)
    best_t, best_dec, best_noise, n = _halving_search(_change_along(pt, d, T), t, max_halvings)
    del T  # the confirmation makes its own pass: the trial steps' (m, dh) arrays are freed before it
    if best_dec > best_noise:
        n += 1
        change, best_noise = risk_change_and_noise(pt.net, pt.net.perturbed(d, best_t), pt.X, pt.Y, pt.loss,
                                                   pt.weight, pt.weight_decay, fwd=pt.fwd)
        best_dec = -change
    verified = bool(best_dec > best_noise)
    return Verification(
        verified, best_t, float(best_dec), R0, R0 - float(best_dec), slope, curvature, radius, float(best_noise), n
    )


class VerifiedDirections:
    """:func:`verify_descent` remembering its line searches at one point: the fragility re-runs (scaled
    tolerances) often predict the same direction again. A verified decrease along a direction is a fact
    about the risk, whatever the boundary pairs, so it is returned again as it is (its slope, curvature
    and radius are those of the first search); an unverified direction is searched again unless the
    boundary pairs, which set the first trial step, are the same."""

    def __init__(self):
        self._done: list[tuple[bytes, np.ndarray, Verification]] = []

    def __call__(self, pt: Point, d: Direction, boundary: np.ndarray) -> Verification:
        key = d.vector().tobytes()
        for k, b, v in self._done:
            if k == key and (v.verified or np.array_equal(b, boundary)):
                return v
        v = verify_descent(pt, d, boundary)
        self._done.append((key, boundary, v))
        return v


def remembered_descent(pt: Point, d: Direction, boundary: np.ndarray) -> Verification:
    """:func:`verify_descent` through the :class:`VerifiedDirections` kept in the point's memo: the analyses
    of one point (the check and its fragility re-runs) share their line searches."""
    return pt.memo.setdefault("line_searches", VerifiedDirections())(pt, d, boundary)
