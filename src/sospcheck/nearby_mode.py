"""Nearby mode: the verdict at the exact stationary point next to the weights (DESIGN.md section 8.6).

Trained weights ``z`` are never exactly stationary, so a verdict about them depends on a tolerance.
:func:`nearby_verdict` answers about a nearby point ``z*`` instead, and says how near it is:

1. neurons whose whole output contribution is negligible are set exactly to zero (smallest first,
   while the move fits in the radius); exact duplicates up to scale are merged when that fits too
   (:mod:`sospcheck.nearby`);
2. with weight decay, each neuron is rescaled to ``|w_k| = |Z_k|`` (:func:`rebalance`): the network's
   function is unchanged (``h`` is positively homogeneous) and the decay term is at its minimum
   along the rescaling orbit, whose curvature (``lam``) is too small for any optimizer to resolve;
   so distances are measured modulo rescaling (:func:`rescaled_distance`). (With ``polish_iters > 0``
   a few Levenberg-Marquardt descent steps follow, :func:`~sospcheck.nearby.polish`.)
3. the pairs with ``|N_ik| <= snap_tol |Z_k| max|xbar|`` are held exactly on their kinks and the
   iteration converges on that stratum (:func:`sospcheck.stratum.converge_on_stratum`) to ``z*``,
   stationary to rounding; when a step would move a neuron across a data point within ``hold_tol``
   of its kink, that pair is held too and the iteration restarts (at most ``max_holds`` times);
4. ``z*`` is checked with tolerances near rounding (:data:`NEARBY_TOLERANCES`).

Every move but the rescaling counts against ``nearby_radius * |z|``. When no stationary point is found within it
(the iteration leaves the stratum, leaves the ball, or stops making progress) the result says so
and holds no verdict: nothing is claimed about a far point. :func:`nearby_verdict` is the one
implementation behind ``check(..., nearby=True)``, ``sospcheck check --nearby``,
``check_model(..., nearby=True)`` and the escape loop's :func:`sospcheck.escape.nearby_check`;
each passes its own ``judge`` (the check it runs at ``z*``). Deep networks (:mod:`sospcheck.deep.nearby`)
share :class:`NearbyResult` and the hold-restart loop (:func:`converge_holding`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from .geometry import boundary_mask
from .loss_change import risk_change
from .losses import Loss
from .model import TwoLayerNet, forward
from .nearby import Nearby, merge_duplicates, near_zero_neurons, polish_within, with_hidden, zero_neurons
from .options import Tolerances
from .result import CheckResult, Reason, Verdict
from .stratum import StratumPoint, StratumStatus, converge_on_stratum

if TYPE_CHECKING:
    from .deep.model import DeepNet

__all__ = ["NEARBY_TOLERANCES", "NearbyResult", "nearby_verdict", "nearby_config", "rebalance", "rescaled_distance",
           "converge_holding"]

#: The check at ``z*`` (docs/tolerances.md). ``boundary 1e-12``: the held pairs sit on their kinks to a
#: few eps of ``|xbar_i| |Z_k|`` (``kink_residual``, DESIGN.md 8.4) and every other pair is at least
#: ``snap_tol`` (1e-7) away, so any threshold in between holds exactly the held pairs. ``gradient
#: 1e-10``: ``z*`` is stationary on its stratum to 1e-15 of the stratum's gradient scale
#: (``rounding_floor``: 1e-12), and the check's output-layer and BVLS residuals are computed in other
#: scales and through the conditioning of the boundary rows; 1e-10 leaves 100x room over
#: ``floor_tol`` while a genuine first-order descent at ``z*`` (a multiplier outside ``[s_minus,
#: s_plus]``) is of the size of the gradient terms themselves. On the saved Table 1 weights the held
#: pairs measured <= 9e-17, the next pair >= 7e-7, the residuals <= 8e-15 (relative). The others keep
#: their defaults, already at rounding level for what they measure (``a_zero``, ``eigen`` 1e-9
#: relative; ``s_bound`` 1e-7 of the slope gap).
NEARBY_TOLERANCES = Tolerances(boundary=1e-12, gradient=1e-10)


def nearby_config(nearby, nearby_radius: float | None = None) -> Nearby | None:
    """The :class:`~sospcheck.nearby.Nearby` of ``check(nearby=..., nearby_radius=...)``: None when nearby mode is
    off (``nearby`` False or None); ``True`` means the defaults; ``nearby_radius`` replaces ``radius``."""
    if nearby is None or nearby is False:
        if nearby_radius is not None:
            raise ValueError("`nearby_radius` is given but nearby mode is off: pass nearby=True as well")
        return None
    cfg = Nearby() if nearby is True else Nearby.from_any(nearby)
    if nearby_radius is not None:
        cfg = replace(cfg, radius=nearby_radius)
    return cfg


@dataclass(frozen=True, eq=False)
class NearbyResult:
    """The verdict at ``z*``, the exact stationary point next to the weights ``z``, and how near it is.

    ``status``: the stratum iteration's (:class:`~sospcheck.stratum.StratumStatus` value); only
    ``converged`` and ``rounding_floor`` are successes, and only then are ``net`` (``z*``: a
    :class:`~sospcheck.model.TwoLayerNet`, or a :class:`~sospcheck.deep.DeepNet` for deep networks,
    :mod:`sospcheck.deep.nearby`) and ``result`` (the check at ``z*``, with :data:`NEARBY_TOLERANCES`,
    :data:`~sospcheck.deep.nearby.DEEP_NEARBY_TOLERANCES` for deep networks) set. ``distance`` /
    ``relative_distance``: ``|z* - z|`` and that over ``|z|``; ``rescaled_distance``: the distance from
    ``z*`` to the rescaling orbits of ``z`` (:func:`rescaled_distance`; the same up to rounding
    without weight decay, where nothing is rescaled), the one ``radius`` bounds; ``loss_change``: ``R(z*) - R(z)``
    below rounding (None on failure); ``steps``: Newton steps of the last run; ``residual``: its
    relative gradient on the stratum; ``radius``: ``nearby_radius`` (relative). ``zeroed`` /
    ``merged``: neurons set to zero / merged groups; ``added``: pairs added to the held ones after a
    step would have moved them across their kink; ``held``: pairs held at ``z*``; ``stratum``: the
    last :class:`~sospcheck.stratum.StratumPoint` (history included). ``certified_radius``: ``r*``,
    within which ``z*`` is the minimum (``result.certified_radius``, DESIGN.md section 4), when the
    check at ``z*`` certifies a strict local minimum; ``inside_certified_radius``: whether the weights
    given lie within it, modulo rescaling.
    """

    status: str
    message: str
    net: TwoLayerNet | DeepNet | None
    result: CheckResult | None
    distance: float | None
    relative_distance: float | None
    rescaled_distance: float | None
    loss_change: float | None
    steps: int
    residual: float
    radius: float
    zeroed: list
    merged: list
    polish_steps: int
    held: int
    added: list
    stratum: StratumPoint | None
    tolerances: Tolerances
    seconds: float

    @property
    def success(self) -> bool:
        return self.result is not None

    @property
    def verdict(self) -> Verdict | None:
        """The verdict at ``z*``; None when no stationary point was found within the radius."""
        return self.result.verdict if self.result is not None else None

    @property
    def relative_rescaled_distance(self) -> float | None:
        if self.rescaled_distance is None or self.distance is None:
            return None
        return self.rescaled_distance * (self.relative_distance / self.distance if self.distance else 0.0)

    @property
    def certified_radius(self) -> float | None:
        rad = self.result.certified_radius if self.result is not None else None
        return rad.value if rad is not None and rad.value > 0 else None

    @property
    def inside_certified_radius(self) -> bool | None:
        r = self.certified_radius
        return None if r is None else bool(self.rescaled_distance <= r)

    @property
    def reason_code(self) -> Reason | None:
        return self.result.reason_code if self.result is not None else None

    def headline(self) -> str:
        """One line: the verdict at ``z*`` and where ``z*`` is, or that no stationary point was found."""
        if not self.success:
            return (f"nearby: no stationary point within nearby_radius {self.radius:g} of your weights "
                    f"({self.status}); no verdict about a far point. {self.message}")
        where = f"relative distance {self.relative_distance:.2g} from your weights (|z* - z| = {self.distance:.3g})"
        if self.rescaled_distance < 0.5 * self.distance:
            where = (f"relative distance {self.relative_rescaled_distance:.2g} from your weights modulo rescaling "
                     f"the neurons, which leaves the network's function unchanged ({self.relative_distance:.2g} "
                     f"without: |z* - z| = {self.distance:.3g})")
        return (f"nearby: {self.verdict.value} ({self.reason_code.value}) at z*, the stationary point at {where}; "
                f"R(z*) - R(z) = {self.loss_change:.3g}; {self.steps} Newton step(s), relative residual "
                f"{self.residual:.2g}")

    def detail_lines(self) -> list[str]:
        """What the report adds below the headline: the moves, the held pairs, the descent at ``z*``."""
        lines = []
        moves = []
        if self.zeroed:
            moves.append(f"zeroed neuron(s) {self.zeroed}")
        if self.merged:
            moves.append(f"merged {self.merged}")
        if self.polish_steps:
            moves.append(f"{self.polish_steps} polish step(s)")
        lines.append(f"{self.held} pair(s) held on their kinks" + (f" ({len(self.added)} added after a step "
                     f"would cross them: {self.added})" if self.added else "") + (", " + ", ".join(moves)
                                                                                if moves else ""))
        if self.result is not None and self.result.descent is not None:
            lines.append("descent at z*: " + self.result.descent.description)
        if self.result is not None and self.result.reason:
            lines.append(f"reason at z*: {self.result.reason}")
        rad = self.result.certified_radius if self.result is not None else None
        if rad is not None:
            if self.certified_radius is None:
                lines.append(f"no radius certified around z*: {rad.what_is_proven}")
            else:
                where = "inside" if self.inside_certified_radius else "outside"
                lines.append(f"z* is the minimum within radius r* = {self.certified_radius:.3g} "
                             f"({'proven' if rad.rigorous else 'partly estimated'}); your weights are {where} it "
                             f"(distance {self.rescaled_distance:.3g} modulo rescaling)")
        tol = self.tolerances
        lines.append(f"tolerances at z*: boundary {tol.boundary:g}, gradient {tol.gradient:g}, a_zero "
                     f"{tol.a_zero:g}, s_bound {tol.s_bound:g}, eigen {tol.eigen:g}")
        return lines

    def to_dict(self) -> dict:
        """The JSON report's ``nearby`` object (schema 2.2)."""
        res = self.result
        return {
            "point": "nearby", "status": self.status, "success": self.success, "message": self.message,
            "verdict": res.verdict.value if res is not None else None,
            "reason_code": res.reason_code.value if res is not None else None,
            "distance": self.distance, "relative_distance": self.relative_distance,
            "rescaled_distance": self.rescaled_distance,
            "relative_rescaled_distance": self.relative_rescaled_distance, "loss_change": self.loss_change, "steps": self.steps, "residual": self.residual,
            "radius": self.radius, "certified_radius": self.certified_radius,
            "inside_certified_radius": self.inside_certified_radius,
            "zeroed": list(self.zeroed), "merged": [list(g) for g in self.merged], "polish_steps": self.polish_steps,
            "held_pairs": self.held, "added_pairs": [list(p) for p in self.added],
            "tolerances": self.tolerances.to_dict(), "seconds": self.seconds,
            "stratum": self.stratum.to_dict() if self.stratum is not None else None,
            "check": res.to_dict() if res is not None else None,
        }


def rebalance(net: TwoLayerNet) -> TwoLayerNet:
    """Each neuron with ``w_k, Z_k`` both nonzero rescaled to ``|c w_k| = |Z_k / c|``: the same function
    (``h(c t) = c h(t)`` for ``c > 0``) with ``|w_k|^2 + |Z_k|^2`` at its minimum over ``c``."""
    zn, wn = np.linalg.norm(net.Z, axis=1), np.linalg.norm(net.W2, axis=0)
    live = (zn > 0) & (wn > 0)
    c = np.ones(net.dh)
    c[live] = np.sqrt(zn[live] / wn[live])
    return with_hidden(net, net.Z / c[:, None], W2=net.W2 * c[None, :])


def rescaled_distance(net: TwoLayerNet, other: TwoLayerNet) -> float:
    """``min over c_k > 0`` of ``|other - (c_k w_k, Z_k / c_k)_k|``: the distance from ``other`` to the
    networks that compute the same function as ``net`` by rescaling its neurons. Per neuron the
    stationarity condition is the quartic ``|w|^2 c^4 - (w . w*) c^3 + (Z . Z*) c - |Z|^2 = 0``."""
    total = float(np.sum((net.b2 - other.b2) ** 2)) if net.has_b2 else 0.0
    for k in range(net.dh):
        w, ws, Z, Zs = net.W2[:, k], other.W2[:, k], net.Z[k], other.Z[k]

        def f(c):
            return float(np.sum((c * w - ws) ** 2) + np.sum((Z / c - Zs) ** 2))

        roots = np.roots([w @ w, -(w @ ws), 0.0, Z @ Zs, -(Z @ Z)]) if np.any(w) or np.any(Z) else np.array([])
        cands = [1.0] + [float(r.real) for r in roots if abs(r.imag) <= 1e-9 * abs(r) and r.real > 0]
        total += min(f(c) for c in cands)
    return math.sqrt(total)


def _zero_within(net: TwoLayerNet, X, Yp, tol: float, budget: float) -> list[int]:
    """The negligible neurons (:func:`~sospcheck.nearby.near_zero_neurons`) that can be zeroed, smallest first,
    while the move ``sqrt(sum |Z_k|^2 + |w_k|^2)`` stays within ``budget``."""
    ks = near_zero_neurons(net, X, Yp, tol, half_zero=True) if tol > 0 else []
    size = {k: float(np.sum(net.Z[k] ** 2) + np.sum(net.W2[:, k] ** 2)) for k in ks}
    taken, total = [], 0.0
    for k in sorted(ks, key=size.get):
        if math.sqrt(total + size[k]) > budget:
            break
        taken.append(k)
        total += size[k]
    return sorted(taken)


def _prepare(net: TwoLayerNet, X, Yp, loss: Loss, weight: float, lam: float, cfg: Nearby,
             budget: float) -> tuple[TwoLayerNet, list, list, int]:
    """Steps 1-2 of the module docstring: zero, merge, polish, each only within the budget."""
    ks = _zero_within(net, X, Yp, cfg.zero_tol, budget)
    cur = zero_neurons(net, ks) if ks else net
    merged, groups = merge_duplicates(cur, X, cfg.merge_tol)
    if groups and merged.distance(net) <= budget:
        cur = merged
    else:
        groups = []
    cur, steps = polish_within(cur, X, Yp, loss, weight, lam, cfg, budget - cur.distance(net))
    return cur, ks, groups, steps


def converge_holding(converge: Callable[[np.ndarray], StratumPoint], held: np.ndarray, holdable: np.ndarray,
                     max_holds: int, notify: Callable) -> tuple[StratumPoint, list]:
    """``converge(held)`` (an m x units mask), restarted with the crossing pair held too while the iteration
    leaves the stratum across a pair within ``hold_tol`` of its kink (at most ``max_holds`` times): step 3 of
    the module docstring, shared with deep networks (:mod:`sospcheck.deep.nearby`). Returns the last run and
    the pairs added."""
    added: list[tuple[int, int]] = []
    while True:
        notify("nearby: converging on the stratum", len(added), None)
        sp = converge(held)
        if (sp.status == StratumStatus.LEFT_STRATUM and sp.crossing is not None and not held[sp.crossing]
                and holdable[sp.crossing] and len(added) < max_holds):
            held = held.copy()
            held[sp.crossing] = True
            added.append(sp.crossing)
            continue
        return sp, added


def nearby_verdict(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float, weight_decay: float,
                   nearby: Nearby, judge: Callable[[TwoLayerNet, Tolerances], CheckResult],
                   notify: Callable[[str, int, int | None], None] | None = None) -> NearbyResult:
    """The verdict at the exact stationary point ``z*`` next to ``net`` (module docstring).

    Args:
        net: the weights ``z``. X: data. Yp: targets prepared by ``loss.prepare``. loss, weight,
            weight_decay: the risk (``weight``: the reduction weight).
        nearby: thresholds and ``radius`` (:class:`~sospcheck.nearby.Nearby`).
        judge: ``judge(z*, tolerances)``, the check at ``z*`` (called with :data:`NEARBY_TOLERANCES`).
        notify: ``notify(phase, done, total)`` progress.
    Returns:
        :class:`NearbyResult`; a failure to find ``z*`` is a status with a message, never an exception.
    """
    notify = notify or (lambda phase, done, total=None: None)
    t0 = time.perf_counter()
    znorm = net.as_direction().norm()
    budget = nearby.radius * znorm
    cur, zeroed, merged, polished = _prepare(net, X, Yp, loss, weight, weight_decay, nearby, budget)
    room = max(budget - cur.distance(net), 0.0)
    if weight_decay:
        cur = rebalance(cur)
    fwd = forward(cur, X)
    sp, added = converge_holding(lambda B: converge_on_stratum(cur, X, Yp, loss, weight, weight_decay, B, radius=room),
                                 boundary_mask(fwd.N, cur.Z, fwd.Xbar, nearby.snap_tol),
                                 boundary_mask(fwd.N, cur.Z, fwd.Xbar, nearby.hold_tol), nearby.max_holds, notify)
    common = dict(steps=sp.steps, residual=sp.relative_gradient, radius=nearby.radius, zeroed=zeroed, merged=merged,
                  polish_steps=polished, held=int(sp.boundary.sum()), added=added, stratum=sp,
                  tolerances=NEARBY_TOLERANCES)
    star = sp.net
    why = sp.message + (f" (after holding {len(added)} more pair(s) on their kinks)" if added else "")

    def failed(status: str, why: str) -> NearbyResult:
        return NearbyResult(status, why, None, None, None, None, None, None, seconds=time.perf_counter() - t0,
                            **common)

    if not sp.success:
        return failed(sp.status.value, why)
    moved = rescaled_distance(net, star)
    if moved > budget * (1 + 1e-12):  # the zeroing or merging, rescaled, took more room
        return failed(StratumStatus.RADIUS_EXCEEDED.value,
                      f"z* lies {moved:.3g} from the weights modulo rescaling, beyond the radius {budget:.3g}")
    dist = star.distance(net)
    notify("nearby: the check at z*", 0, 1)
    result = judge(star, NEARBY_TOLERANCES)
    notify("nearby: the check at z*", 1, 1)
    return NearbyResult(sp.status.value, why, star, result, dist, dist / znorm if znorm > 0 else math.inf, moved,
                        risk_change(net, star, X, Yp, loss, weight, weight_decay),
                        seconds=time.perf_counter() - t0, **common)
