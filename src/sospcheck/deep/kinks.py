"""Kinks of a deep network and its switching variables (DESIGN.md section 10.1, 10.3).

A kink is a pair ``(i, l, k)`` (data point, hidden layer, unit) with ``N^l_ik = 0``. Each kink gets
an order ``rho`` (how many zero weights separate its unit from an output at that point): inert kinks
(``rho >= 2``) are frozen, the others are switching variables, collected into groups of kinks that are
one switching variable (proportional pre-activations; for ``rho = 1`` proportional first-order rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .model import DeepForward, DeepNet

__all__ = ["Kink", "Group", "KinkSet", "find_kinks", "kink_orders", "function_groups", "INERT"]

INERT = 2  # orders are capped here: rho >= 2 means inert


@dataclass(frozen=True)
class Kink:
    """Pair ``(i, l, k)`` on its kink (``l`` counts hidden layers from 0), with its order ``rho``."""

    i: int
    l: int
    k: int
    rho: int


@dataclass
class Group:
    """One switching variable: ``members`` ``(kink index, c)`` with ``z_member = c z_rep`` (``rep`` has
    ``c = 1``); ``rho`` the order shared by its kinks (0 or 1)."""

    rep: int
    members: list
    rho: int

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass
class KinkSet:
    """The kinks of a point: ``mask[l]`` (m x n_l), the list ``kinks``, the switching ``groups`` and the
    indices of the ``inert`` kinks (slope frozen at ``s_plus``); ``identically_zero``: kinks whose
    pre-activation is 0 for every nearby ``theta`` (frozen too)."""

    mask: list
    kinks: list
    groups: list = field(default_factory=list)
    inert: list = field(default_factory=list)
    identically_zero: list = field(default_factory=list)

    @property
    def M(self) -> int:
        return len(self.kinks)

    def per_layer(self) -> list[int]:
        return [int(m.sum()) for m in self.mask]

    def reps(self, groups: list[int] | None = None) -> list[tuple[int, int, int]]:
        """``(i, l, k)`` of each group's representative kink (of the groups indexed by ``groups``, else all)."""
        chosen = self.groups if groups is None else [self.groups[q] for q in groups]
        return [(self.kinks[g.rep].i, self.kinks[g.rep].l, self.kinks[g.rep].k) for g in chosen]


def boundary_thresholds(net: DeepNet, fwd: DeepForward, tol_boundary: float) -> list[np.ndarray]:
    """Per hidden layer, ``tau_b |[W_l b_l]_k| max_i |[a^{l-1}_i; 1]|`` (section 6, per unit)."""
    out = []
    for l in range(net.depth):
        W, b = net.weights[l], net.biases[l]
        A = fwd.A[l]
        row = np.sqrt(np.sum(W**2, axis=1) + (b**2 if b is not None else 0.0))
        amax = float(np.max(np.sqrt(np.sum(A**2, axis=1) + (1.0 if b is not None else 0.0))))
        out.append(tol_boundary * row * amax)
    return out


def find_kinks(net: DeepNet, fwd: DeepForward, tol_boundary: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The kink masks (``|N^l_ik| <= threshold``) and the ratios ``|N| / threshold`` (for margins)."""
    masks, ratios = [], []
    for l, thr in enumerate(boundary_thresholds(net, fwd, tol_boundary)):
        N = np.abs(fwd.N[l])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(N == 0, 0.0, N / thr[None, :])
        masks.append(ratio <= 1.0)
        ratios.append(ratio)
    return masks, ratios


def transmitting(net: DeepNet, fwd: DeepForward, masks: list[np.ndarray]) -> list[np.ndarray]:
    """``m x n_l``: the unit's slope at the point can be nonzero (active, leaky, or on its kink)."""
    return [(fwd.N[l] > 0) | (net.s_minus != 0) | masks[l] for l in range(net.depth)]


def kink_orders(net: DeepNet, fwd: DeepForward, masks: list[np.ndarray]) -> list[np.ndarray]:
    """``rho[l]`` (m x n_l, capped at ``INERT``): least number of zero weights on a path from the unit to an
    output through transmitting units at that point (section 10.3)."""
    m = fwd.A[0].shape[0]
    trans = transmitting(net, fwd, masks)
    D = net.depth
    rho_next = np.zeros((m, net.dy))  # outputs
    rhos = [None] * D
    for l in range(D - 1, -1, -1):
        cost = (net.weights[l + 1] == 0).astype(float)  # n_{l+1} x n_l
        # rho_l[i, k] = min_v cost[v, k] + rho_{l+1}[i, v]
        rho = np.min(cost[None, :, :] + rho_next[:, :, None], axis=1)
        rho = np.minimum(rho, INERT)
        rhos[l] = rho
        rho_next = np.where(trans[l], rho, np.inf)
    return rhos


def _parallel_key(v: np.ndarray, tol: float, signed: bool):
    """Unit direction of ``v`` (up to sign unless ``signed``), and the factor ``c`` with ``v = c * key *
    |v_rep|`` resolved by the caller; None for a zero vector."""
    n = float(np.linalg.norm(v))
    if n <= tol:
        return None, 0.0
    u = v / n
    s = 1.0
    if not signed:
        j = int(np.argmax(np.abs(u) > tol))
        s = 1.0 if u[j] > 0 else -1.0
    return s * u, s * n


def function_groups(net: DeepNet, X: np.ndarray, kinks: list[Kink], tol: float) -> tuple[list[list], list[int]]:
    """Kinks of one unit whose pre-activations are proportional functions of ``theta`` near the point
    (DESIGN.md 10.3): identical inputs (any layer); in layer 1 parallel ``xbar``; in layer ``l`` without
    biases in layers ``1..l``, positively parallel inputs. Returns the classes as lists of ``(index, c)``
    (``c`` relative to the first) and the kinks whose pre-activation is identically 0."""
    no_bias_upto = np.cumsum([b is not None for b in net.biases]) == 0  # [l]: no bias in layers 0..l
    classes, zero = [], []
    by_unit: dict = {}
    for j, kk in enumerate(kinks):
        by_unit.setdefault((kk.l, kk.k), []).append(j)
    for (l, k), js in by_unit.items():
        reps: list = []  # (key, norm, class list)
        for j in js:
            x = X[kinks[j].i]
            if l == 0:
                v = np.append(x, 1.0) if net.biases[0] is not None else x
                signed = False
            elif no_bias_upto[l]:
                v, signed = x, True
            else:
                v, signed = x, None  # only identical inputs
            if signed is None:
                for key, cls in reps:
                    if np.array_equal(key, v):
                        cls.append((j, 1.0))
                        break
                else:
                    reps.append((v, [(j, 1.0)]))
                continue
            key, n = _parallel_key(v, tol * max(1.0, float(np.max(np.abs(X)))), signed)
            if key is None:
                zero.append(j)
                continue
            for (rkey, rn), cls in reps:
                if np.linalg.norm(key - rkey) <= 2 * tol:
                    cls.append((j, n / rn))
                    break
            else:
                reps.append(((key, n), [(j, 1.0)]))
        classes += [cls for _, cls in reps]
    return classes, zero
