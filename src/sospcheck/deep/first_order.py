"""First order at a deep network's point (DESIGN.md 10.5, 10.9).

Under the kink qualification: two least squares, ``grad f_+ = G_+' kappa^+ + gamma`` and
``grad f_- = G_-' kappa^- + gamma``, then one sign test per ray. Without it: one cone projection (NNLS)
per sign pattern of the order-0 groups (section 9's per-cell test), within a budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

import numpy as np

from ..arrangement import cone_projection
from ..margins import Margins
from .kinks import KinkSet

__all__ = ["KinkGeometry", "FirstOrder", "kink_geometry", "first_order_likq", "first_order_patterns"]


@dataclass(frozen=True)
class KinkGeometry:
    """``G_+``, ``G_-`` (one row per group, pieces with every group on ``+`` / ``-``), the pieces'
    gradients, and the rank of ``G_+`` (LIKQ: rank = number of groups)."""

    G_plus: np.ndarray
    G_minus: np.ndarray
    g_plus: np.ndarray
    g_minus: np.ndarray
    rank: int
    singular_values: np.ndarray

    @property
    def n(self) -> int:
        return self.G_plus.shape[0]

    @property
    def likq(self) -> bool:
        return self.rank == self.n


def numerical_rank(G: np.ndarray, tol_rank: float) -> tuple[int, np.ndarray]:
    if G.shape[0] == 0:
        return 0, np.zeros(0)
    sv = np.linalg.svd(G, compute_uv=False)
    return int(np.sum(sv > tol_rank * sv[0])) if sv[0] > 0 else 0, sv


def kink_geometry(pieces, net, ks: KinkSet, tol_rank: float) -> KinkGeometry:
    from .switching import piece_slopes

    reps = ks.reps()
    n = len(ks.groups)
    S_plus = pieces.slopes(piece_slopes(net, ks, [1] * n))
    S_minus = pieces.slopes(piece_slopes(net, ks, [-1] * n))
    Gp, Gm = pieces.jacobian(S_plus, reps), pieces.jacobian(S_minus, reps)
    rank, sv = numerical_rank(Gp, tol_rank)
    return KinkGeometry(Gp, Gm, pieces.gradient(S_plus), pieces.gradient(S_minus), rank, sv)


@dataclass
class FirstOrder:
    """What the first-order tests found. ``candidate``: ``(eta, slope per unit length, test, group)`` of
    the steepest descent found, or None. Under LIKQ: ``kappa_plus`` / ``kappa_minus`` (multipliers),
    ``gamma`` (the gradient's part along the held kinks' tangent space), the rays and their unit slopes,
    and the flat sides; ``patterns``: sign patterns examined without LIKQ."""

    stationary: bool  # candidate = (eta, slope of eta / |eta|, test, group or None)
    scale: float
    gamma_norm: float
    candidate: tuple | None = None
    kappa_plus: np.ndarray | None = None
    kappa_minus: np.ndarray | None = None
    slope_plus: np.ndarray | None = None
    slope_minus: np.ndarray | None = None
    flat_plus: np.ndarray | None = None
    flat_minus: np.ndarray | None = None
    patterns: int = 0
    margins: list = field(default_factory=list)

    @property
    def L(self) -> int:
        return 0 if self.flat_plus is None else int(np.sum(self.flat_plus | self.flat_minus))

    @property
    def K(self) -> int:
        return 0 if self.flat_plus is None else int(np.sum(self.flat_plus & self.flat_minus))


def _right_inverse(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``G'`` = QR (``G`` full row rank): the pseudo-inverse ``G^+ = Q R'^{-1}`` and ``Q``."""
    Q, R = np.linalg.qr(G.T)
    return Q @ np.linalg.inv(R).T, Q


def first_order_likq(geo: KinkGeometry, ks: KinkSet, scale: float, tol_gradient: float) -> FirstOrder:
    """Section 10.5: ``gamma`` and the ``2n`` rays; order-1 groups are flat both ways by construction."""
    margins = Margins()
    thr = tol_gradient * scale
    if geo.n == 0:
        gamma = geo.g_plus
        kp = km = np.zeros(0)
        Pp = Pm = np.zeros((gamma.size, 0))
    else:
        Pp, Qp = _right_inverse(geo.G_plus)
        Pm, _ = _right_inverse(geo.G_minus)
        kp = Pp.T @ geo.g_plus  # kappa = (G G')^{-1} G g = G^+' g
        km = Pm.T @ geo.g_minus
        gamma = geo.g_plus - Qp @ (Qp.T @ geo.g_plus)
    gnorm = float(np.linalg.norm(gamma))
    margins.add("deep: tangent gradient |gamma|", gnorm, thr)
    fo = FirstOrder(False, scale, gnorm, kappa_plus=kp, kappa_minus=km, margins=[])
    if gnorm > thr:
        fo.candidate = (-gamma, -gnorm, "tangent gradient", None)
        fo.margins = margins.items()
        return fo
    np_ = np.linalg.norm(Pp, axis=0)
    nm = np.linalg.norm(Pm, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sp = np.where(np_ > 0, kp / np_, 0.0)  # slope per unit length along +G_+^+ e_g
        sm = np.where(nm > 0, -km / nm, 0.0)  # along -G_-^+ e_g
    order1 = np.array([g.rho >= 1 for g in ks.groups], bool)
    sp, sm = np.where(order1, 0.0, sp), np.where(order1, 0.0, sm)
    fo.slope_plus, fo.slope_minus = sp, sm
    fo.flat_plus = np.abs(sp) <= thr
    fo.flat_minus = np.abs(sm) <= thr
    for name, s in (("deep: ray slope (+)", sp), ("deep: ray slope (-)", sm)):
        for x in s[~order1]:
            margins.add(name, float(x), thr)
    best = None
    for sign, s, P in ((1.0, sp, Pp), (-1.0, sm, Pm)):
        if s.size:
            g = int(np.argmin(s))
            if s[g] < -thr and (best is None or s[g] < best[1]):
                best = (sign * P[:, g], float(s[g]), "extreme ray", g)
    fo.candidate = best
    fo.stationary = best is None
    fo.margins = margins.items()
    return fo


def cone_steepest(g: np.ndarray, W: np.ndarray) -> tuple[float, np.ndarray | None]:
    """``min g . v`` over ``{W v >= 0, |v| <= 1}`` = ``-|P_C(-g)|`` (Moreau; section 9), and the minimiser."""
    P = cone_projection(W, -g)
    n = float(np.linalg.norm(P))
    return -n, (P / n if n > 0 else None)


def first_order_patterns(pieces, net, ks: KinkSet, scale: float, tol_gradient: float,
                         max_patterns: int) -> FirstOrder | None:
    """Section 10.9: every sign pattern of the order-0 groups (order-1 groups do not enter the first order),
    one cone projection each; None when ``2^n`` exceeds ``max_patterns``."""
    from .switching import piece_slopes

    margins = Margins()
    thr = tol_gradient * scale
    live = [q for q, g in enumerate(ks.groups) if g.rho == 0]
    if 2.0 ** len(live) > max_patterns:
        return None
    reps = ks.reps(live)
    best, worst_value, n = None, 0.0, 0
    for signs in product((1, -1), repeat=len(live)):
        full = [1] * len(ks.groups)
        for q, s in zip(live, signs):
            full[q] = s
        S = pieces.slopes(piece_slopes(net, ks, full))
        g = pieces.gradient(S)
        G = pieces.jacobian(S, reps)
        W = np.array(signs, float)[:, None] * G if live else np.zeros((0, g.size))
        value, v = cone_steepest(g, W)
        n += 1
        margins.add("deep: cone slope (patterns)", value, thr)
        worst_value = min(worst_value, value)
        if value < -thr and (best is None or value < best[1]):
            best = (v, value, "sign pattern " + "".join("+" if s > 0 else "-" for s in signs), None)
    return FirstOrder(best is None, scale, 0.0, candidate=best, patterns=n, margins=margins.items())
