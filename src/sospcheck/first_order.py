"""First-order tests: output-layer gradient, per-neuron Clarke stationarity, extreme-ray slopes (DESIGN.md section 3, steps 1-3).

Each thresholded decision also records its margin ratio ``|value| / threshold`` (:mod:`sospcheck.margins`),
from which the check tells whether a 10x tolerance change could flip it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import lsq_linear

from .augmented import frobenius_norm, product_chunks, row_block
from .geometry import ray_directions
from .margins import Margins
from .options import Tolerances
from .point import Point

__all__ = ["OutputLayerTest", "NeuronTest", "Ray", "output_layer_test", "neuron_tests", "steepest_ray", "ratios",
           "record_sides", "record_column_sides", "record_within_beyond"]


def ratios(x, t) -> np.ndarray:
    """``|x| / t`` elementwise; 0 where ``x = 0`` and inf where only ``t = 0``: no positive scaling of a
    zero threshold flips ``|x| <= t`` (as :func:`sospcheck.margins.margin_ratio`)."""
    x = np.abs(np.asarray(x, float))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0, 0.0, x / np.asarray(t, float))


def record_sides(margins: Margins, name: str, ratio) -> None:
    """Record the ratio nearest to 1 on each side of 1 (decided ``<= threshold``, and not): one entry per
    side, so that each also tells which way, x10 or x0.1, its decisions could flip."""
    ratio = np.ravel(ratio)
    if ratio.size == 0:
        return
    record_within_beyond(margins, name, float(np.max(ratio, where=ratio <= 1.0, initial=-np.inf)),
                         float(np.min(ratio, where=ratio > 1.0, initial=np.inf)))


def record_column_sides(margins: Margins, name: str, within: np.ndarray, beyond: np.ndarray,
                        threshold: np.ndarray) -> None:
    """:func:`record_sides` for decisions ``|x_ik| <= t_k`` from each column's largest ``|x|`` within its
    threshold (-inf where none is) and smallest beyond it (inf where none is): dividing by the column's
    threshold is monotone, so these hold the ratios nearest to 1."""
    inside, outside = within >= 0, beyond < np.inf
    record_within_beyond(margins, name, float(np.max(ratios(within[inside], threshold[inside]), initial=-np.inf)),
                         float(np.min(ratios(beyond[outside], threshold[outside]), initial=np.inf)))


def record_within_beyond(margins: Margins, name: str, within: float, beyond: float) -> None:
    """:func:`record_sides` from the two ratios themselves (-inf / inf for a side without decisions)."""
    if within >= 0:
        margins.add(f"{name} (within)", within, 1.0)
    if beyond < np.inf:
        margins.add(f"{name} (beyond)", beyond, 1.0)


@dataclass(frozen=True)
class OutputLayerTest:
    """Step 1: ``G_W2 = sum_i r_i O_i'``, ``G_b2 = sum_i r_i`` (plus weight decay); exact gradients."""

    G_W2: np.ndarray
    G_b2: np.ndarray | None
    norm: float
    scale: float
    stationary: bool
    ratio: float  # norm / (gradient tolerance * scale)


def output_layer_test(pt: Point, tol: Tolerances) -> OutputLayerTest:
    """Step 1: the output layer enters linearly, so its gradient is an ordinary gradient."""
    net = pt.net
    G_W2 = pt.r.T @ pt.fwd.O
    G_b2 = pt.r.sum(axis=0) if net.has_b2 else None
    scale = np.linalg.norm(pt.r) * np.sqrt(np.linalg.norm(pt.fwd.O) ** 2 + (pt.m if net.has_b2 else 0))
    if pt.weight_decay:
        G_W2 = G_W2 + pt.weight_decay * net.W2
        if net.has_b2:
            G_b2 = G_b2 + pt.weight_decay * net.b2
        scale += pt.weight_decay * np.sqrt(np.sum(net.W2**2) + (np.sum(net.b2**2) if net.has_b2 else 0.0))
    norm = float(np.sqrt(np.sum(G_W2**2) + (np.sum(G_b2**2) if net.has_b2 else 0.0)))
    return OutputLayerTest(G_W2, G_b2, norm, float(scale), bool(norm <= tol.gradient * scale),
                           float(ratios(norm, tol.gradient * scale)[()]))


@dataclass(frozen=True)
class NeuronTest:
    """Steps 2-3 for hidden neuron ``k``.

    ``vt`` is the min-norm element of the Clarke subdifferential w.r.t. ``Z_k``; when it vanishes,
    ``slope_plus[j]`` / ``slope_minus[j]`` are the one-sided derivatives along ``+-vhat_j``
    (``(s_plus - s*_j) a_jk`` and ``(s*_j - s_minus) a_jk``), ``flat_*`` mark the zero ones.
    """

    k: int
    boundary: np.ndarray  # indices i in B_k
    s_star: np.ndarray
    vt: np.ndarray
    residual: float
    scale: float
    stationary: bool
    rank: int
    rays: np.ndarray | None  # D_k (d x M_k), None if Assumption 2 fails
    slope_plus: np.ndarray
    slope_minus: np.ndarray
    flat_plus: np.ndarray
    flat_minus: np.ndarray
    residual_ratio: float
    flat_ratios: np.ndarray

    @property
    def M(self) -> int:
        return int(self.boundary.size)

    @property
    def assumption2(self) -> bool:
        return self.rays is not None

    @property
    def n_flat(self) -> int:
        return int(np.sum(self.flat_plus | self.flat_minus))

    @property
    def n_both_flat(self) -> int:
        return int(np.sum(self.flat_plus & self.flat_minus))


def neuron_tests(pt: Point, boundary: np.ndarray, tol: Tolerances) -> list[NeuronTest]:
    """Steps 2-3 for every neuron: the off-kink gradients ``c_k`` in one pass over the data, then
    per neuron with kinks one bounded-variable least squares and ``2 M_k`` sign tests."""
    net, Xbar = pt.net, pt.fwd.Xbar
    C, a_sq, a_max = _off_kink_gradients(pt, boundary)
    scale = max(net.s_plus, net.s_minus) * np.sqrt(a_sq) * frobenius_norm(Xbar)
    if pt.weight_decay:
        C = C + pt.weight_decay * net.Z
        scale = scale + pt.weight_decay * np.linalg.norm(net.Z, axis=1)
    r_max = np.max(np.linalg.norm(pt.r, axis=1))
    return [_neuron_test(pt, k, boundary[:, k], C[k], float(scale[k]), r_max, float(a_max[k]), tol)
            for k in range(net.dh)]


def _off_kink_gradients(pt: Point, boundary: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``C = (S * a)' Xbar`` (dh, d) with ``S_ik = h'(N_ik)`` off the boundary and 0 on it, ``|a_k|^2`` and
    ``max_i |a_ik|``: one pass, ``a`` formed a chunk of rows at a time. The pass is made once per point (a
    read-only mask is kept with it); for another mask (a fragility re-run) ``C`` is corrected by the terms
    of the pairs that changed side, when they are few: each enters or leaves the sum as it would in the
    pass, so the rounding is of the same order as the sum's own."""
    first = pt.memo.get("off_kink_gradients")
    if first is not None:
        mask, C, a_sq, a_max = first
        rows, cols = np.nonzero(mask != boundary)
        if rows.size <= max(1, boundary.shape[0] // 8):
            return _changed_sides(pt, boundary, C, rows, cols), a_sq, a_max
    out = _gradient_pass(pt, boundary)
    if first is None and not boundary.flags.writeable:
        pt.memo["off_kink_gradients"] = (boundary, *out)
    return out


def _gradient_pass(pt: Point, boundary: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    net, Xbar, N = pt.net, pt.fwd.Xbar, pt.fwd.N
    C, a_sq, a_max = np.zeros((net.dh, Xbar.shape[1])), np.zeros(net.dh), np.zeros(net.dh)
    for rows in product_chunks(Xbar, 3 * net.dh):
        a = pt.a(rows)
        a_sq += np.einsum("ik,ik->k", a, a)
        np.maximum(a_max, np.max(np.abs(a), axis=0), out=a_max)
        C += (np.where(boundary[rows], 0.0, net.slope(N[rows])) * a).T @ row_block(Xbar, rows)
    for arr in (C, a_sq, a_max):  # shared with the fragility re-runs (Point.memo)
        arr.flags.writeable = False
    return C, a_sq, a_max


def _changed_sides(pt: Point, boundary: np.ndarray, C: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``C`` of the mask ``boundary`` from ``C`` of another: the term ``h'(N_ik) a_ik xbar_i`` of each pair
    ``(rows, cols)`` that changed side is added (now off the boundary) or taken away (now on it)."""
    if not rows.size:
        return C
    net = pt.net
    a = np.einsum("id,di->i", pt.r[rows], net.W2[:, cols])
    w = np.where(boundary[rows, cols], -1.0, 1.0) * net.slope(pt.fwd.N[rows, cols]) * a
    out = np.array(C)
    np.add.at(out, cols, w[:, None] * pt.fwd.Xbar[rows])
    return out


def _neuron_test(pt: Point, k: int, boundary_k: np.ndarray, c: np.ndarray, scale: float, r_max: float,
                 a_max: float, tol: Tolerances) -> NeuronTest:
    """``s* = argmin_{s in [s_lo, s_hi]^M_k} |c_k + sum_i s_i a_ik xbar_i|`` (scipy's BVLS), then the rays;
    ``a_max = max_i |a_ik|``."""
    net, Xbar = pt.net, pt.fwd.Xbar
    s_lo, s_hi = sorted((net.s_minus, net.s_plus))
    idx = np.flatnonzero(boundary_k)
    Xk = Xbar[idx]
    aB = pt.a(idx, k)
    if idx.size:
        A = Xk.T * aB[None, :]
        if np.any(A):
            # |c + A s| = |Q'c + R s| + const with A = QR: BVLS iterates on M_k x M_k, not d x M_k
            Q, R = np.linalg.qr(A)
            s_star = lsq_linear(R, -(Q.T @ c), bounds=(s_lo, s_hi), method="bvls", tol=1e-14).x
        else:
            s_star = np.full(idx.size, 0.5 * (s_lo + s_hi))
        vt = c + A @ s_star
    else:
        s_star = np.zeros(0)
        vt = c
    residual = float(np.linalg.norm(vt))
    rays, rank = ray_directions(Xk, tol.rank)
    slope_plus = (net.s_plus - s_star) * aB
    slope_minus = (s_star - net.s_minus) * aB
    w_scale = np.linalg.norm(net.W2[:, k]) * r_max
    a_zero = np.abs(aB) <= tol.a_zero * w_scale
    s_gap = tol.s_bound * abs(net.s_plus - net.s_minus)
    flat_plus = a_zero | (np.abs(s_star - net.s_plus) <= s_gap)
    flat_minus = a_zero | (np.abs(s_star - net.s_minus) <= s_gap)
    flat_ratios = np.vstack([ratios(aB, tol.a_zero * w_scale), ratios(s_star - net.s_plus, s_gap),
                             ratios(s_star - net.s_minus, s_gap)])
    # without weight decay, a neuron whose a_ik are all zero (a_zero) has a subgradient of rounding
    # noise, which its own scale (|a_k|, itself noise) cannot judge: stationary by the a_ik rule
    ratio = float(ratios(residual, tol.gradient * scale)[()])
    if not pt.weight_decay:
        ratio = min(ratio, float(ratios(a_max, tol.a_zero * w_scale)[()]))
    return NeuronTest(
        k, idx, s_star, vt, residual, scale, bool(ratio <= 1.0), rank, rays,
        slope_plus, slope_minus, flat_plus, flat_minus, ratio, flat_ratios,
    )


@dataclass(frozen=True)
class Ray:
    """Step 3's steepest descending extreme ray: moving ``Z_k`` along ``direction`` (a column of ``+-D_k``)
    lowers the loss at ``rate < 0`` per unit length."""

    k: int
    rate: float
    direction: np.ndarray


def steepest_ray(neurons: list[NeuronTest], skip: np.ndarray | list | None = None) -> Ray | None:
    """Step 3: over the neurons with kinks, Assumption 2 and not ``skip`` (e.g. zero-output neurons), the
    ray ``+-vhat_j`` with the most negative one-sided slope per unit length (flat rays count as 0);
    None when no ray descends."""
    best = None
    for nt in neurons:
        if nt.M == 0 or not nt.assumption2 or (skip is not None and skip[nt.k]):
            continue
        norms = np.linalg.norm(nt.rays, axis=0)
        for sign, slopes, flat in ((1.0, nt.slope_plus, nt.flat_plus), (-1.0, nt.slope_minus, nt.flat_minus)):
            rate = np.where(flat, 0.0, slopes / norms)
            j = int(np.argmin(rate))
            if rate[j] < 0 and (best is None or rate[j] < best.rate):
                best = Ray(nt.k, float(rate[j]), sign * nt.rays[:, j])
    return best
