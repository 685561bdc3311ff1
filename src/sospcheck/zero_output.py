"""Neurons with a zero output column ``w_k = 0`` (DESIGN.md section 7), in closed form.

With ``w_k = 0`` every ``a_ik`` vanishes, so every boundary pair of neuron k is a K pair and the
2^M_k cones would all need a QP. But ``nu_k`` enters the second-order form only through the
cross term ``u_k . g(nu)`` with the piecewise-linear map

    g(nu) = sum_i r_i h'(N_ik; t_ik) t_ik,   t_ik = xr_i . nu

(the directional derivative of ``sum_i r_i h(N_ik)`` along ``nu``). If ``g(nu) != 0`` for some
``nu``, then ``u_k = -g(nu)`` and a large multiple of ``nu`` give ``second < 0``: a second-order
descent direction. If ``g == 0`` identically, ``nu_k`` never enters ``second`` and the loss is
constant along it (``w_k = 0``): an exactly flat block, quotiented out.

Deciding ``g == 0``: write ``h'(0; t) t = s_minus t + (s_plus - s_minus) relu(t)`` and group the
boundary vectors by the line through the origin they span, ``xr_j = lambda_j a_l``. Because
``relu(-c t) = c (relu(t) - t)`` for ``c > 0``, ``g(nu) = G nu + (s_plus - s_minus) sum_l R_l
relu(a_l . nu)`` with ``R_l = sum_{j in l} |lambda_j| r_j``. Ramps on distinct lines are linearly
independent of each other and of linear maps (each has its own kink hyperplane), so ``g == 0``
iff every ``R_l = 0`` and then the remaining linear map ``G`` is 0. This needs no assumption on
the boundary vectors (zero neurons, ``Z_k = 0``, put every point on the kink).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .geometry import row_norms
from .margins import Margins

__all__ = ["ZeroOutputTest", "zero_output_test", "zero_output_mask", "zero_output_ratios"]


@dataclass(frozen=True)
class ZeroOutputTest:
    """``flat``: ``g == 0`` so ``nu_k`` is an exactly flat block. Else ``nu`` with ``g(nu) = g_nu != 0``
    (``nu is None`` with ``flat`` False: undecided). ``margins``: the decisions against ``tol``
    (:mod:`sospcheck.margins`)."""

    k: int
    flat: bool
    nu: np.ndarray | None
    g_nu: np.ndarray | None
    n_lines: int
    margins: list = field(default_factory=list)


def zero_output_ratios(pt, a_zero: float) -> np.ndarray:
    """Per neuron the margin of the zero-output test (:mod:`sospcheck.margins`): the smaller of
    ``|w_k| / (a_zero |W2|)`` and ``c_k / (a_zero (|out| + |Y|))``, where ``c_k = s_hi |w_k| |Z_k|
    max_i |xbar_i| sqrt(m)`` bounds the neuron's whole output contribution. The second test catches an
    output layer that is negligible as a whole (every ``|w_k|`` tiny): its first-order slopes are then
    rounding noise in the loss, so its kinks must be searched on both sides, as for ``w_k = 0``.
    0 where ``w_k = 0`` exactly, inf where the test cannot hold; with weight decay all inf."""
    net = pt.net
    col = np.linalg.norm(net.W2, axis=0)
    if pt.weight_decay != 0:
        return np.full(col.shape, np.inf)
    xbar_max = float(np.max(row_norms(pt.fwd.Xbar)))
    contribution = max(net.s_plus, net.s_minus) * col * np.linalg.norm(net.Z, axis=1) * xbar_max * np.sqrt(pt.m)
    output_scale = float(np.linalg.norm(pt.fwd.out) + np.linalg.norm(pt.Y))
    return np.minimum(_ratio(col, a_zero * np.linalg.norm(net.W2)), _ratio(contribution, a_zero * output_scale))


def _ratio(x: np.ndarray, t: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0, 0.0, x / t) if t > 0 else np.where(x == 0, 0.0, np.inf)


def zero_output_mask(pt, a_zero: float) -> np.ndarray:
    """Neurons treated as having a zero output column: no weight decay and a zero-output ratio
    (:func:`zero_output_ratios`) of at most 1."""
    return zero_output_ratios(pt, a_zero) <= 1.0


def _g(nu, Xr, r, slope_off, boundary, s_plus, s_minus):
    t = Xr @ nu
    J = np.where(boundary, np.where(t > 0, s_plus, s_minus), slope_off)
    return r.T @ (J * t)


def _group_lines(U: np.ndarray, weighted: np.ndarray, cos_tol: float = 1e-9) -> tuple[list, list]:
    """Group unit rows of ``U`` by the line through the origin they span; per line its direction
    ``a_l`` (the first member) and ``R_l``, the sum of its rows of ``weighted`` (either orientation:
    the ramp's coefficient is ``|lambda_j| r_j``). One pass over the remaining rows per line:
    ``O(M * lines)`` work in BLAS."""
    lines: list[np.ndarray] = []
    R: list[np.ndarray] = []
    rest = np.arange(U.shape[0])
    while rest.size:
        a = U[rest[0]]
        c = U[rest] @ a
        same = np.abs(np.abs(c) - 1.0) <= cos_tol
        lines.append(a)
        R.append(weighted[rest[same]].sum(axis=0))
        rest = rest[~same]
    return lines, R


def zero_output_test(k: int, Xr: np.ndarray, r: np.ndarray, N_k: np.ndarray, boundary_k: np.ndarray,
                     s_plus: float, s_minus: float, tol: float, rng: np.random.Generator) -> ZeroOutputTest:
    """Decide ``g == 0`` for neuron ``k`` (``w_k = 0``) and, if not, return a ``nu`` with ``g(nu) != 0``.

    ``tol`` is absolute, on the norms of ``R_l`` and of the linear part's columns.
    """
    slope_off = np.where(N_k > 0, s_plus, s_minus)
    args = (Xr, r, slope_off, boundary_k, s_plus, s_minus)
    idx = np.flatnonzero(boundary_k)
    norms = np.linalg.norm(Xr[idx], axis=1)
    idx, norms = idx[norms > 0], norms[norms > 0]
    lines, R = _group_lines(Xr[idx] / norms[:, None], norms[:, None] * r[idx])
    rho = Xr.shape[1]
    m = Margins()
    for a, Rl in zip(lines, R):
        if m.at_most("zero output: ramp |R_l|", np.linalg.norm(Rl), tol):
            continue
        # g jumps by (s_plus - s_minus) R_l across the hyperplane a . nu = 0: probe both sides of
        # a generic point on it (generic, so that no other kink lies in between)
        for _ in range(20):
            nu0 = rng.standard_normal(rho)
            nu0 -= (nu0 @ a) * a
            nu0 /= max(np.linalg.norm(nu0), 1e-300)
            t_other = np.abs(Xr[idx] @ nu0)
            t_other = t_other[t_other > 1e-12]
            eps = 0.25 * (np.min(t_other) / np.max(norms) if t_other.size else 1.0)
            best = max((nu0 + sgn * eps * a for sgn in (1.0, -1.0)),
                       key=lambda nu: np.linalg.norm(_g(nu, *args)))
            g_nu = _g(best, *args)
            if not m.at_most("zero output: probe |g(nu)|", np.linalg.norm(g_nu), tol * np.linalg.norm(best)):
                return ZeroOutputTest(k, False, best, g_nu, len(lines), m.items())
        # a jump that no probe could see: say so rather than guess (the caller reports inconclusive)
        return ZeroOutputTest(k, False, None, None, len(lines), m.items())
    # every R_l vanishes: g is linear; read its matrix off the basis vectors
    G = np.stack([_g(e, *args) for e in np.eye(rho)], axis=1) if rho else np.zeros((r.shape[1], 0))
    if G.size and not m.at_most("zero output: linear part |G|", np.max(np.linalg.norm(G, axis=0)), tol):
        _, _, Vt = np.linalg.svd(G)
        nu = Vt[0]
        return ZeroOutputTest(k, False, nu, _g(nu, *args), len(lines), m.items())
    return ZeroOutputTest(k, True, None, None, len(lines), m.items())
