"""One escape attempt: the check at the nearby kink point, then a step along what it certified.

:func:`nearby_check` checks the exact stationary point next to the weights (nearby mode) or, when
there is none within the radius, the nearby kink point (:func:`sospcheck.nearby.nearby_point`).
:func:`escape_step` then line-searches the check's verified direction from that point.
When the direction grows a zero neuron (order 2), the neuron that lowers the loss most is tried
too (:func:`best_new_neuron`); when the check finds only an order-1 direction, it is re-run with a
looser gradient tolerance to look for an order-2 one. Whatever is taken was evaluated on the true
loss and must beat the loss where the optimizer was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..augmented import dense
from ..check import check, validate_inputs
from ..geometry import row_norms
from ..losses import Loss, risk
from ..model import TwoLayerNet, forward
from ..nearby import Nearby, escape_nearby, nearby_point, with_hidden
from ..nearby_mode import NearbyResult, nearby_verdict
from ..options import Tolerances
from ..result import CheckResult, Verdict

__all__ = ["NearbyCheck", "nearby_check", "neuron_size_bound", "best_new_neuron", "EscapeAttempt", "escape_step"]


@dataclass(frozen=True)
class NearbyCheck:
    """The check at the nearby point ``net`` (= ``result.net``) of the weights ``start``: ``z*`` when
    nearby mode found one (``nearby``, its :class:`~sospcheck.nearby_mode.NearbyResult`), else
    the nearby kink point of ``start`` (:func:`~sospcheck.nearby.nearby_point`: negligible neurons zeroed,
    duplicates merged, near-kink points snapped, polished), checked with the caller's tolerances."""

    result: CheckResult
    net: TwoLayerNet
    start: TwoLayerNet
    zeroed: list
    merged: list
    polish_steps: int
    loss_start: float
    loss_nearby: float
    distance: float
    nearby: NearbyResult | None = None


def _setup(net, X, Y, loss, reduction, weight_decay=0.0):
    """Validated ``X``, prepared ``Y``, the loss and the reduction weight (errors name the argument)."""
    X, Yp, lossobj, weight, _ = validate_inputs(net, X, Y, loss, reduction, weight_decay)
    return X, Yp, lossobj, weight


def nearby_check(net: TwoLayerNet, X, Y, loss="squared", reduction: str = "sum", weight_decay: float = 0.0, *,
                 nearby: Nearby | dict | None = None, **check_kwargs) -> NearbyCheck:
    """The check's nearby mode (:func:`sospcheck.nearby_mode.nearby_verdict`) with the escape loop's
    thresholds (:func:`~sospcheck.nearby.escape_nearby`: a dict overrides
    :data:`~sospcheck.nearby.ESCAPE_NEARBY`): the verdict at ``z*``, the exact stationary point next to
    ``net``, checked with the nearby tolerances; when none is found within the radius (a stall is often
    not near a stationary point: a neuron is still growing), the check at the nearby kink point
    (:func:`~sospcheck.nearby.nearby_point`; ``None`` or a dict: over :data:`~sospcheck.nearby.KINK_POINT`,
    whose 30 polish steps and refit lower the loss there; a :class:`Nearby` as given), whose zeroed and
    merged neurons are what lets the loop leave a plateau (``check_kwargs``: tolerances, budget,
    fragility, ...; their ``tolerances`` apply there only). The verdict and any direction are about
    ``NearbyCheck.net``; ``loss_start`` is the risk at ``net``."""
    for key in ("snap", "nearby_radius"):
        if key in check_kwargs:
            raise TypeError(f"nearby_check() finds the nearby point by itself; do not pass `{key}`")
    X, Yp, lossobj, weight = _setup(net, X, Y, loss, reduction, weight_decay)
    cfg = escape_nearby(nearby)
    common = dict(loss=lossobj, reduction=reduction, weight_decay=weight_decay)
    at_star = {k: v for k, v in check_kwargs.items() if k != "tolerances"}
    nb = nearby_verdict(net, X, Yp, lossobj, weight, weight_decay, cfg,
                        lambda z, tols: check(z, X, Yp, tolerances=tols, **common, **at_star))
    if nb.success:
        result, near, zeroed, merged, polished = nb.result, nb.net, nb.zeroed, nb.merged, nb.polish_steps
    else:
        near, info = nearby_point(net, X, Yp, lossobj, weight, weight_decay, nearby)
        result = check(near, X, Yp, **common, **check_kwargs)
        zeroed, merged, polished = info["zeroed"], info["merged"], info["polish_steps"]
    start_loss = risk(net, X, Yp, lossobj, weight, weight_decay)
    distance = near.distance(net)
    return NearbyCheck(result, near, net, zeroed, merged, polished, start_loss, result.loss_value, distance, nb)


def neuron_size_bound(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray) -> float:
    """``max_k |w_k| |Z_k|``, or when every neuron is (nearly) zero the size ``(rms(outputs) +
    rms(targets)) / max|xbar|`` that a neuron needs to produce outputs of the targets' scale."""
    fwd = forward(net, X)
    sizes = np.linalg.norm(net.W2, axis=0) * np.linalg.norm(net.Z, axis=1)
    scale = (np.sqrt(np.mean(fwd.out**2)) + np.sqrt(np.mean(Yp**2))) / np.max(row_norms(fwd.Xbar))
    return float(max(np.max(sizes), scale))


def _grow_neuron(net: TwoLayerNet, X, Yp, loss, weight, lam, k, v, u, s_max: float) -> tuple[TwoLayerNet, float]:
    """``Z_k = sqrt(s) v``, ``w_k = sqrt(s) u`` (``v``, ``u`` unit) with the best ``s`` in ``[0, s_max]``:
    the outputs move by ``s u h(Xbar v)``, affine in ``s``, and ``|Z_k|^2 + |w_k|^2 = 2 s``, so ``R`` is
    convex in ``s`` and a bounded scalar search finds its minimum."""
    from scipy.optimize import minimize_scalar

    def make(s):
        Z, W2 = np.array(net.Z), np.array(net.W2)
        Z[k], W2[:, k] = np.sqrt(s) * v, np.sqrt(s) * u
        return with_hidden(net, Z, W2=W2)

    def R(s):
        return risk(make(max(s, 0.0)), X, Yp, loss, weight, lam)

    found = minimize_scalar(R, bounds=(0.0, s_max), method="bounded", options={"xatol": 1e-9 * s_max})
    s_best = min((0.0, float(found.x), s_max), key=R)
    return make(s_best), R(s_best)


def best_new_neuron(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float, k: int,
                    weight_decay: float = 0.0, starts: list | None = None, iters: int = 20, n_random: int = 32,
                    seed: int = 0) -> tuple[TwoLayerNet | None, float]:
    """Grow the zero neuron ``k`` into the one that lowers ``R`` most, no larger than the largest
    neuron (:func:`neuron_size_bound`): ``Z_k = sqrt(s) v``, ``w_k = sqrt(s) u``.

    Candidates ``v`` (unit) come from ascent on the correlation ``|r' h(Xbar v)| / |h(Xbar v)|``
    (``r_i`` the weighted loss gradients) from several starts (``starts``, each ``+- xbar_i``,
    ``n_random`` random rows): with the activation pattern ``s`` of ``v`` fixed, the best ``h =
    diag(s) Xbar v`` is the top singular direction of ``r'`` on ``range(diag(s) Xbar)``; a move is
    kept only if the correlation (with the new pattern) improves. Each candidate, with ``u = -r' h /
    |r' h|``, is grown by an exact search over ``s`` (:func:`_grow_neuron`); the lowest risk wins.
    Returns the network and its risk (``None, inf`` if no candidate activates anything).
    """
    fwd = forward(net, X)
    Xbar = fwd.Xbar
    Xd = dense(Xbar)  # the SVDs below need the array; formed once
    r = weight * np.asarray(loss.grad(fwd.out, Yp))
    s_max = neuron_size_bound(net, X, Yp)

    def score(v):
        hv = net.activation(Xbar @ v)
        nh = np.linalg.norm(hv)
        return float(np.linalg.norm(r.T @ hv) / nh) if nh > 0 else -np.inf

    rng = np.random.default_rng(seed)
    cands = [np.asarray(v, float) for v in (starts or [])]
    cands += [sgn * x for x in Xbar[:64] for sgn in (1.0, -1.0)]
    cands += list(rng.standard_normal((n_random, Xbar.shape[1])))
    found: dict = {}
    for v in cands:
        if not np.any(v):
            continue
        cur = score(v)
        for _ in range(iters):
            pattern = np.where(Xbar @ v > 0, net.s_plus, net.s_minus)
            U, sv, Vt = np.linalg.svd(pattern[:, None] * Xd, full_matrices=False)
            rank = int(np.sum(sv > 1e-12 * sv[0])) if sv.size and sv[0] > 0 else 0
            if rank == 0:
                break
            w = np.linalg.svd(r.T @ U[:, :rank], full_matrices=False)[2][0]
            step = Vt[:rank].T @ (w / sv[:rank])
            trial = max((score(sgn * step), sgn) for sgn in (1.0, -1.0))
            if not trial[0] > cur * (1.0 + 1e-12):
                break
            cur, v = trial[0], trial[1] * step
        if cur > 0:
            v = v / np.linalg.norm(v)
            found.setdefault(tuple(np.round(v, 8)), v)  # local optima repeat: grow each once
    best, best_R = None, math.inf
    for v in found.values():
        g = r.T @ net.activation(Xbar @ v)
        gn = np.linalg.norm(g)
        if not (np.isfinite(gn) and gn > 0):  # a correlation at rounding level (r ~ 0): nothing to grow
            continue
        u = -g / gn
        grown, R = _grow_neuron(net, X, Yp, loss, weight, weight_decay, k, v, u, s_max)
        if R < best_R:
            best, best_R = grown, R
    return best, best_R


@dataclass(frozen=True)
class EscapeAttempt:
    """One escape attempt. ``new_net`` is where training should resume when the verdict was ``descent``
    and that point's loss ``loss_after`` is below the starting loss; else None. The step taken:
    its ``order`` and ``test`` (from the certificate that proposed it; ``loose`` when that was the
    check with the loosened gradient tolerance), ``direction``: "certificate" (the certificate's
    direction, line-searched) or "best neuron" (:func:`best_new_neuron`), and its length ``step``."""

    nearby: NearbyCheck
    new_net: TwoLayerNet | None
    step: float | None
    loss_after: float
    direction: str | None = None
    order: int | None = None
    test: str | None = None
    loose: bool = False
    loose_result: CheckResult | None = None

    @property
    def verdict(self) -> Verdict:
        return self.nearby.result.verdict


def _zero_neuron_of(d, net: TwoLayerNet) -> int | None:
    """The neuron a zero-output certificate moves (its only nonzero block), if it is a zero neuron
    (``Z_k = 0``: its output is ``w_k h(0) = 0`` whatever ``w_k``; at ``z*`` the stratum
    iteration leaves a zeroed neuron's ``w_k`` at rounding level, not exactly 0)."""
    moved = np.flatnonzero((np.linalg.norm(d.Z, axis=1) > 0) | (np.linalg.norm(d.W2, axis=0) > 0))
    if moved.size != 1:
        return None
    k = int(moved[0])
    return k if not np.any(net.Z[k]) else None


def _steps(res: CheckResult, near: TwoLayerNet, X, Yp, lossobj, weight, lam, best_neuron: bool,
           max_doublings: int) -> list[tuple]:
    """Candidate steps ``(loss, net, direction, step)`` from a descent certificate at ``near``."""
    d = res.descent.direction

    def R(t):
        return risk(near.perturbed(d, t), X, Yp, lossobj, weight, lam)

    t, f = res.descent.step, res.descent.loss_after
    t_cap = max(1.0, near.as_direction().norm())  # no step longer than the weights: keep the optimizer stable
    for _ in range(max_doublings):
        if 2.0 * t > t_cap:
            break
        f2 = R(2.0 * t)
        if not f2 < f:
            break
        t, f = 2.0 * t, f2
    out = [(f, near.perturbed(d, t), "certificate", t)]
    k = _zero_neuron_of(d, near) if best_neuron and res.descent.order == 2 else None
    if k is not None:
        grown, f_grown = best_new_neuron(near, X, Yp, lossobj, weight, k, lam, starts=[d.Z[k]])
        if grown is not None:
            dist = grown.distance(near)
            out.append((f_grown, grown, "best neuron", dist))
    return out


def escape_step(net: TwoLayerNet, X, Y, loss="squared", reduction: str = "sum", weight_decay: float = 0.0, *,
                nearby: Nearby | dict | None = None, best_neuron: bool = True, loose_gradient: float = 1e-4,
                max_doublings: int = 30, **check_kwargs) -> EscapeAttempt:
    """:func:`nearby_check`, then on ``descent`` a line search along the certified direction ``d``
    from the nearby point: from the certificate's verified step ``t``, double ``t`` while
    ``R(z_near + t d)`` keeps falling and ``t <= max(1, |z_near|)``. When ``d`` grows a zero neuron
    and ``best_neuron``, that neuron grown by :func:`best_new_neuron` is a candidate too.

    An order-1 verdict at the nearby point often means "stationary but for tiny slopes" (a minimum
    a hair off the kink it was snapped to): the check is then re-run with the gradient tolerance
    raised to ``loose_gradient`` (0 disables), and its order-2 direction, if any, is a candidate as
    well. Every candidate is evaluated on the true risk; the lowest wins, and it is accepted only
    if it beats the loss at ``net``. Tiny neurons that the nearby point set to zero and the step
    left at zero get their weights back (when the loss still beats that at ``net``)."""
    near = nearby_check(net, X, Y, loss, reduction, weight_decay, nearby=nearby, **check_kwargs)
    res = near.result
    if res.verdict != Verdict.DESCENT:
        return EscapeAttempt(near, None, None, near.loss_start)
    X, Yp, lossobj, weight = _setup(net, X, Y, loss, reduction, weight_decay)
    args = (near.net, X, Yp, lossobj, weight, weight_decay, best_neuron, max_doublings)
    cands = [c + (res, False) for c in _steps(res, *args)]
    loose = None
    tol = Tolerances.from_any(check_kwargs.get("tolerances"))
    if res.descent.order == 1 and loose_gradient > tol.gradient:
        kwargs = {**check_kwargs, "tolerances": replace(tol, gradient=loose_gradient), "fragility": False}
        loose = check(near.net, X, Yp, loss=lossobj, reduction=reduction, weight_decay=weight_decay, **kwargs)
        if loose.verdict == Verdict.DESCENT and loose.descent.order == 2:
            cands += [c + (loose, True) for c in _steps(loose, *args)]
    f, new_net, how, t, source, is_loose = min(cands, key=lambda c: c[0])
    order, test = source.descent.order, source.descent.test
    idle = [k for k in near.zeroed if not np.any(new_net.Z[k])]
    if idle:
        # the step did not use the tiny neurons set to zero: give them back, since an optimizer
        # cannot grow an exactly zero neuron (its gradient vanishes) but may be growing a tiny one
        Z, W2 = np.array(new_net.Z), np.array(new_net.W2)
        Z[idle], W2[:, idle] = net.Z[idle], net.W2[:, idle]
        restored = with_hidden(new_net, Z, W2=W2)
        f_restored = risk(restored, X, Yp, lossobj, weight, weight_decay)
        if f_restored < near.loss_start - 1e-12 * abs(near.loss_start):
            new_net, f = restored, f_restored
    if not f < near.loss_start - 1e-12 * abs(near.loss_start):
        return EscapeAttempt(near, None, t, near.loss_start, how, order, test, is_loose, loose)
    return EscapeAttempt(near, new_net, t, f, how, order, test, is_loose, loose)
