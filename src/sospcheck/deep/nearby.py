"""Nearby mode for deep networks: the verdict at the exact stationary point next to the weights (DESIGN.md 10.11).

As for one hidden layer (:mod:`sospcheck.nearby_mode`, DESIGN.md 8.6): the pairs ``(i, l, k)`` with ``|N^l_ik|
<= snap_tol |[W_l b_l]_k| max_i |[a^{l-1}_i; 1]|`` (the deep kink test's scaling, section 10) are held at
exactly zero pre-activation, every other sign kept, and the iteration converges on that stratum
(:func:`~sospcheck.deep.stratum.converge_on_deep_stratum`) to ``z*``, stationary to rounding within
``nearby_radius * |z|``; a step that would move a pair within ``hold_tol`` of its kink across it adds that pair
to the held ones and restarts (:func:`~sospcheck.nearby_mode.converge_holding`). ``z*`` is then checked by
:func:`~sospcheck.deep.check_deep` with :data:`DEEP_NEARBY_TOLERANCES`; the outcome is the one-hidden-layer
:class:`~sospcheck.nearby_mode.NearbyResult`. Not done for deep networks: zeroing negligible units, merging
duplicates and rebalancing under weight decay (``zeroed``, ``merged`` stay empty, and every distance is the
plain ``|z* - z|``: nothing is rescaled).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from ..losses import Loss
from ..nearby import Nearby
from ..nearby_mode import NearbyResult, converge_holding, nearby_config
from ..options import Tolerances
from ..result import CheckResult
from .kinks import find_kinks
from .model import DeepNet, deep_forward
from .stratum import check_stratum_size, converge_on_deep_stratum

__all__ = ["DEEP_NEARBY_TOLERANCES", "deep_nearby_config", "deep_nearby_verdict", "hold_masks", "attach_nearby"]

#: The check at ``z*`` for deep networks. ``boundary 1e-12``: the held pairs sit on their kinks to a few eps of
#: their kink scale ``|[W_l b_l]_k| max|[a; 1]|`` (the iteration's ``kink_residual``), every other pair at least
#: ``snap_tol`` (1e-7) of it away at the weights and still ~1e-7 at ``z*`` (the move is within ``nearby_radius``
#: and below the pairs' own margins, or the iteration would have stopped), so any threshold in between holds
#: exactly the held pairs. ``gradient 1e-10``: ``z*`` is stationary on its stratum to 1e-15 (``gtol``; at
#: worst ``floor_tol`` 1e-12) of ``| |J|' |r| + |C|' |mu| | + lam |theta|``, the size of the terms of the
#: restricted gradient; the check divides its tangent gradient ``|gamma|`` by the absolute-value gradient of
#: the network with ``|W|``, ``|x|``, ``|r|`` (DESIGN.md 10.5), which bounds ``|J|' |r|`` from above, and
#: obtains ``gamma`` through a least squares over the held kinks' gradients; 1e-10 leaves 100x over
#: ``floor_tol`` for that conditioning while a genuine first-order descent at ``z*`` (a multiplier outside
#: ``[s_lo, s_hi]``, a flat group's ray) is of the size of the gradient terms. Measured on the study's trained
#: weights (experiments/DEEP.md): held pairs <= 1e-16 of their scale, residuals <= 1e-14. The others keep
#: their defaults (relative, already at rounding level for what they measure).
DEEP_NEARBY_TOLERANCES = Tolerances(boundary=1e-12, gradient=1e-10)


def deep_nearby_config(nearby, nearby_radius: float | None, net: DeepNet, m: int) -> Nearby | None:
    """:func:`~sospcheck.nearby_mode.nearby_config`, and the size refusal of
    :func:`~sospcheck.deep.stratum.check_stratum_size`, both before any work."""
    cfg = nearby_config(nearby, nearby_radius)
    if cfg is not None:
        check_stratum_size(net, m)
    return cfg


def hold_masks(net: DeepNet, X: np.ndarray, tols: tuple[float, ...]) -> list[list[np.ndarray]]:
    """Per tolerance in ``tols``, per hidden layer, the pairs within it of their kink at the deep kink
    test's scale (one forward pass for all)."""
    fwd = deep_forward(net, X)
    return [find_kinks(net, fwd, tol)[0] for tol in tols]


def deep_nearby_verdict(net: DeepNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float, weight_decay: float,
                        nearby: Nearby, judge: Callable[[DeepNet, Tolerances], CheckResult],
                        notify: Callable | None = None) -> NearbyResult:
    """The verdict at the exact stationary point ``z*`` next to the deep network ``net`` (module docstring);
    ``judge(z*, tolerances)`` is the check at ``z*``. A failure to find ``z*`` is a status, never an exception."""
    notify = notify or (lambda phase, done, total=None: None)
    t0 = time.perf_counter()
    znorm = float(np.linalg.norm(net.vector()))
    budget = nearby.radius * znorm
    widths = np.cumsum([0] + net.widths)

    def converge(mask: np.ndarray):
        held = [mask[:, widths[l]:widths[l + 1]] for l in range(net.depth)]
        return converge_on_deep_stratum(net, X, Yp, loss, weight, weight_decay, held, radius=budget)

    joined = [np.concatenate(masks, axis=1) for masks in hold_masks(net, X, (nearby.snap_tol, nearby.hold_tol))]
    sp, added = converge_holding(converge, joined[0], joined[1], nearby.max_holds, notify)
    common = dict(steps=sp.steps, residual=sp.relative_gradient, radius=nearby.radius, zeroed=[], merged=[],
                  polish_steps=0, held=int(sp.boundary.sum()), added=added, stratum=sp,
                  tolerances=DEEP_NEARBY_TOLERANCES)
    why = sp.message + (f" (after holding {len(added)} more pair(s) on their kinks)" if added else "")
    if not sp.success:
        return NearbyResult(sp.status.value, why, None, None, None, None, None, None,
                            seconds=time.perf_counter() - t0, **common)
    notify("nearby: the check at z*", 0, 1)
    result = judge(sp.net, DEEP_NEARBY_TOLERANCES)
    notify("nearby: the check at z*", 1, 1)
    return NearbyResult(sp.status.value, why, sp.net, result, sp.distance,
                        sp.distance / znorm if znorm > 0 else math.inf, sp.distance, sp.loss_change,
                        seconds=time.perf_counter() - t0, **common)


def attach_nearby(result: CheckResult, problem, nearby: Nearby, judge: Callable, notify=None) -> CheckResult:
    """``result.nearby`` and its timing for :func:`~sospcheck.deep.check_deep` (``problem``: its DeepProblem)."""
    t1 = time.perf_counter()
    result.nearby = deep_nearby_verdict(problem.net, problem.X, problem.Y, problem.loss, problem.weight,
                                        problem.weight_decay, nearby, judge, notify)
    result.timings["nearby"] = time.perf_counter() - t1
    return result
