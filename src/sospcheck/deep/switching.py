"""The switching variables of a deep network at a point: kinks, orders, groups (DESIGN.md 10.3, 10.4).

Inert kinks (order >= 2) and kinks with an identically zero pre-activation are frozen at ``s_plus``;
order-0 kinks are grouped only when their pre-activations are proportional functions; order-1 kinks
whenever their abs-normal rows ``(Z_j, L_j)`` are proportional (then ``y_j = c y_rep`` to first order).
"""

from __future__ import annotations

import numpy as np

from .kinks import INERT, Group, Kink, KinkSet, function_groups
from .model import DeepForward, DeepNet
from .pieces import Pieces

__all__ = ["switching_variables", "base_slopes", "piece_slopes"]


def base_slopes(net: DeepNet, fwd: DeepForward, masks: list[np.ndarray]) -> list[np.ndarray]:
    """``h'(N)`` off the kinks, NaN on them (every piece sets them)."""
    return [np.where(masks[l], np.nan, np.where(fwd.N[l] > 0, net.s_plus, net.s_minus)) for l in range(net.depth)]


def piece_slopes(net: DeepNet, ks: KinkSet, signs) -> dict:
    """Slopes of a piece: group ``g`` on side ``signs[g]`` (+1/-1), member ``(j, c)`` at ``s_{sign(c) signs[g]}``;
    frozen kinks at ``s_plus``."""
    out = {}
    for j in ks.inert + ks.identically_zero:
        kk = ks.kinks[j]
        out[(kk.i, kk.l, kk.k)] = net.s_plus
    for g, s in zip(ks.groups, signs):
        for j, c in g.members:
            kk = ks.kinks[j]
            out[(kk.i, kk.l, kk.k)] = net.s_plus if c * s > 0 else net.s_minus
    return out


def _parallel_classes(rows: np.ndarray, tol: float) -> list[list]:
    """Classes of proportional nonzero rows, as lists of ``(row index, c)`` with ``row = c row_first``;
    zero rows (relative ``tol``) are returned as the class ``[]``-free list ``zero``."""
    scale = float(np.max(np.linalg.norm(rows, axis=1))) if rows.size else 0.0
    classes, zero = [], []
    for q, v in enumerate(rows):
        n = float(np.linalg.norm(v))
        if n <= tol * scale or n == 0:
            zero.append(q)
            continue
        u = v / n
        for cls in classes:
            ru, rn = cls[0]
            for s in (1.0, -1.0):
                if np.linalg.norm(u - s * ru) <= 2 * tol:
                    cls[1].append((q, s * n / rn))
                    break
            else:
                continue
            break
        else:
            classes.append(((u, n), [(q, 1.0)]))
    return [c[1] for c in classes], zero


def switching_variables(net: DeepNet, X: np.ndarray, masks: list[np.ndarray], rhos: list[np.ndarray],
                        pieces: Pieces, tol_rank: float) -> KinkSet:
    """The kinks in layer order (then data point, unit), frozen ones, and the groups (section 10.3)."""
    kinks = []
    for l, mask in enumerate(masks):
        for i, k in zip(*np.nonzero(mask)):
            kinks.append(Kink(int(i), l, int(k), int(rhos[l][i, k])))
    ks = KinkSet(masks, kinks)
    classes, zero = function_groups(net, X, kinks, tol_rank)
    ks.identically_zero = sorted(zero)
    ks.inert = sorted(j for j, kk in enumerate(kinks) if kk.rho >= INERT and j not in set(zero))
    frozen = set(ks.inert) | set(zero)
    groups = []
    order1 = []
    for cls in classes:
        live = [(j, c) for j, c in cls if j not in frozen]
        if not live:
            continue
        if min(kinks[j].rho for j, _ in live) == 0:
            c0 = live[0][1]
            groups.append(Group(live[0][0], [(j, c / c0) for j, c in live], 0))
        else:
            order1 += [j for j, _ in live]
    if order1:
        switching = sorted({j for g in groups for j, _ in g.members} | set(order1))
        idx = [(kinks[j].i, kinks[j].l, kinks[j].k) for j in switching]
        overrides = {key: 0.0 for key in idx}
        overrides.update({(kinks[j].i, kinks[j].l, kinks[j].k): net.s_plus for j in frozen})
        Zm, Lm = pieces.abs_normal(pieces.slopes(overrides), idx)
        pos = {j: q for q, j in enumerate(switching)}
        rows = np.hstack([Zm, Lm])[[pos[j] for j in order1]]
        cls1, zero1 = _parallel_classes(rows, tol_rank)
        for cls in cls1:
            groups.append(Group(order1[cls[0][0]], [(order1[q], c) for q, c in cls], 1))
        # a first-order value that vanishes identically acts at third order only: frozen like the inert ones
        ks.inert = sorted(set(ks.inert) | {order1[q] for q in zero1})
    groups.sort(key=lambda g: (kinks[g.rep].l, kinks[g.rep].i, kinks[g.rep].k))
    ks.groups = groups
    return ks
