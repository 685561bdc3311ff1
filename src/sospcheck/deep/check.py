"""SOSP-CHECK for deep fully connected ReLU-like networks (DESIGN.md section 10).

point -> kinks and switching variables -> kink qualification -> first order (two least squares and the
rays, or sign patterns without LIKQ) -> second order on the critical cone (ECQP/ICQP with the kink
surfaces' curvature; without LIKQ one ICQP per critical face of the cells) -> verification on the true
risk -> :class:`~sospcheck.result.CheckResult`.
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..check import second_order_cause
from ..first_order import record_sides
from ..losses import INTERPOLATION_ULPS, Loss, interpolates
from ..margins import FRAGILITY_FACTORS, Margins, any_in_band, fragility_verdicts
from ..options import Budget, Tolerances
from ..validation import validate_features, validate_targets
from ..result import CheckResult, Decision, DescentCertificate, NeuronRecord, Reason, Stats
from ..second_order import Outcome
from .cells import second_order_cells
from .first_order import FirstOrder, first_order_likq, first_order_patterns, kink_geometry
from .kinks import find_kinks, kink_orders
from .model import DeepDirection, DeepNet, deep_forward
from .nearby import attach_nearby, deep_nearby_config
from .pieces import Pieces
from .second_order import DeepSecondOrder, quotient_basis, second_order_deep
from .stratum import deep_risk_change_and_noise
from .switching import base_slopes, switching_variables

__all__ = ["check_deep", "DeepProblem", "DeepStats", "verify_deep", "line_search_decrease"]

MAX_PATTERNS = 4096


@dataclass(frozen=True)
class DeepProblem:
    """``R(theta) = weight sum_i l(out_i, y_i) + lam/2 |theta|^2`` at the weights ``net`` (``Y`` prepared)."""

    net: DeepNet
    X: np.ndarray
    Y: np.ndarray
    loss: Loss
    weight: float
    weight_decay: float

    def risk_at(self, theta: np.ndarray) -> float:
        return self.risk_from(deep_forward(self.net.with_vector(theta), self.X).out, theta)

    def risk_from(self, out: np.ndarray, theta: np.ndarray) -> float:
        """``R`` at the weights ``theta`` whose outputs on ``X`` are ``out``."""
        v = self.weight * float(np.sum(self.loss.value(out, self.Y)))
        if self.weight_decay:
            v += 0.5 * self.weight_decay * float(theta @ theta)
        return v


@dataclass
class DeepStats(Stats):
    """:class:`~sospcheck.result.Stats` plus the deep numbers: widths, kinks per hidden layer, the switching
    groups (order 0 / order 1), frozen kinks, the kink qualification's rank, sign patterns enumerated,
    the quotient. ``output_gradient_norm`` holds ``|gamma|`` (the gradient along the held kinks' tangent
    space, DESIGN.md 10.5) and ``output_gradient_scale`` its scale; ``L``, ``K`` count flat groups. Without
    LIKQ (10.9): ``cells`` of the switching groups, their bound ``cell_bound`` (counted against
    ``Budget.max_cells``) and the ``critical_faces`` (one ICQP each)."""

    widths: list = field(default_factory=list)
    kinks_per_layer: list = field(default_factory=list)
    groups: int = 0
    groups_order1: int = 0
    inert_kinks: int = 0
    likq: bool | None = None
    likq_rank: int | None = None
    patterns: int = 0
    units: list = field(default_factory=list)
    deep_quotient: dict = field(default_factory=dict)
    flat_groups: int = 0
    both_flat_groups: int = 0
    cells: int = 0
    cell_bound: int = 0
    critical_faces: int = 0

    @property
    def L(self) -> int:
        return self.flat_groups

    @property
    def K(self) -> int:
        return self.both_flat_groups

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update({"widths": self.widths, "kinks_per_layer": self.kinks_per_layer, "groups": self.groups,
                  "groups_order1": self.groups_order1, "inert_kinks": self.inert_kinks, "likq": self.likq,
                  "likq_rank": self.likq_rank, "patterns": self.patterns, "units": [list(u) for u in self.units],
                  "deep_quotient": self.deep_quotient, "cells": self.cells, "cell_bound": self.cell_bound,
                  "critical_faces": self.critical_faces})
        return d


def _validate(net, X, Y, loss, reduction, weight_decay, solver, max_patterns):
    if not isinstance(net, DeepNet):
        raise TypeError(f"`net` must be a sospcheck.deep.DeepNet, got {type(net).__name__}")
    X = validate_features(X, net.dx)
    Yp, lossobj, weight, lam = validate_targets(X, Y, loss, reduction, weight_decay, net.dy)
    if solver not in ("auto", "dense", "matrix_free"):
        raise ValueError(f"`solver` must be 'auto', 'dense' or 'matrix_free', got {solver!r}")
    if isinstance(max_patterns, bool) or not isinstance(max_patterns, numbers.Integral) or max_patterns < 1:
        raise ValueError(f"`max_patterns` must be a positive integer, got {max_patterns!r}")
    out = deep_forward(net, X).out
    if not np.all(np.isfinite(out)):
        raise ValueError("the network's outputs on `X` overflow float64; rescale the data or the weights")
    return X, Yp, lossobj, weight, lam


def check_deep(net: DeepNet, X, Y, loss="squared", reduction: str = "sum", weight_decay: float = 0.0,
               tolerances: Tolerances | dict | None = None, budget: Budget | dict | None = None,
               solver: str = "auto", fragility: bool = True, max_patterns: int = MAX_PATTERNS,
               device=None, progress=None, nearby=False, nearby_radius: float | None = None) -> CheckResult:
    """Is the deep network ``net`` a local minimum, an SOSP, or not (with a verified descent) for ``(X, Y)``?

    Args:
        net: the weights (:class:`DeepNet`, any number of hidden layers). X: (m, dx). Y: targets.
        loss, reduction, weight_decay, tolerances, budget, solver: as :func:`sospcheck.check`.
        fragility: re-run with every tolerance x10 and x0.1 when some decision's margin lies within 10x
            of its threshold, and flag a changed verdict.
        max_patterns: most sign patterns enumerated for the first order without the kink qualification (the
            second order then counts cells and critical faces against ``budget``, DESIGN.md 10.9).
        device: torch device for the derivatives (float64; default CPU).
        nearby, nearby_radius: nearby mode (:mod:`sospcheck.deep.nearby`, DESIGN.md 10.11): ``result.nearby``
            holds the verdict at ``z*``, the exact stationary point on the weights' stratum within
            ``nearby_radius * |z|`` (default 1e-3), or why there is none; as :func:`sospcheck.check`.

    Returns:
        :class:`~sospcheck.result.CheckResult`; a descent's ``direction`` is a :class:`DeepDirection`
        (``.tensors(step)`` gives the displacement in ``model.parameters()`` order).
    """
    X, Yp, lossobj, weight, lam = _validate(net, X, Y, loss, reduction, weight_decay, solver, max_patterns)
    nearby_cfg = deep_nearby_config(nearby, nearby_radius, net, X.shape[0])
    tol = Tolerances.from_any(tolerances)
    bud = Budget.from_any(budget)
    problem = DeepProblem(net, X, Yp, lossobj, weight, lam)
    result, margins = _analyze(problem, tol, bud, solver, int(max_patterns), device, progress)
    result.loss, result.reduction = lossobj.name, reduction
    if fragility:
        t1 = time.perf_counter()
        factors = tuple(f for _, f in FRAGILITY_FACTORS) if any_in_band(margins) else ()
        result.fragility = fragility_verdicts(
            result.verdict, factors,
            lambda f: _analyze(problem, tol.scaled(f), bud, solver, int(max_patterns), device)[0].verdict,
            lambda *_: None)
        result.fragile = any(v != result.verdict.value for v in result.fragility.values())
        if factors:
            result.timings["fragility"] = time.perf_counter() - t1
    if nearby_cfg is not None:  # the same check at z*, with the tolerances of the nearby mode
        attach_nearby(result, problem, nearby_cfg, lambda z, tols: check_deep(
            z, X, Y, loss, reduction, weight_decay, tols, budget, solver, fragility, max_patterns, device), progress)
    return result


@dataclass
class _State:
    problem: DeepProblem
    value: float
    margins: Margins
    timings: dict
    established: list
    stats: DeepStats
    tol: Tolerances
    budget: Budget
    clock: float = field(default_factory=time.perf_counter)

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.clock
        self.clock = now


def _analyze(problem: DeepProblem, tol: Tolerances, bud: Budget, solver: str, max_patterns: int, device=None,
             progress=None) -> tuple[CheckResult, list]:
    net, X = problem.net, problem.X
    theta0 = net.vector()
    fwd = deep_forward(net, X)
    r = problem.weight * np.asarray(problem.loss.grad(fwd.out, problem.Y), float)
    Hl = problem.weight * np.asarray(problem.loss.hess(fwd.out, problem.Y), float)
    value = problem.risk_from(fwd.out, theta0)
    stats = DeepStats(m=X.shape[0], p=net.n_params, widths=net.widths)
    st = _State(problem, value, Margins(), {}, [], stats, tol, bud)
    if _interpolates(problem, fwd.out, r):
        st.established.append(f"outputs interpolate the targets to rounding ({INTERPOLATION_ULPS:g} eps relative; "
                              "loss >= 0, zero at the targets)")
        return _finish(st, Reason.INTERPOLATION, None, None, None)
    masks, ratios = find_kinks(net, fwd, tol.boundary)
    record_sides(st.margins, "boundary |N| (deep)", np.concatenate([q.ravel() for q in ratios]))
    stats.kinks_per_layer = [int(mk.sum()) for mk in masks]
    rhos = kink_orders(net, fwd, masks)
    pieces = Pieces(net, X, r, Hl, problem.weight_decay, base_slopes(net, fwd, masks), device)
    ks = switching_variables(net, X, masks, rhos, pieces, tol.rank)
    stats.groups, stats.groups_order1 = len(ks.groups), sum(g.rho >= 1 for g in ks.groups)
    stats.inert_kinks = len(ks.inert) + len(ks.identically_zero)
    stats.units = [(l, k) for l, w in enumerate(net.widths) for k in range(w)]
    scale = pieces.abs_gradient_norm(net.s_hi) + problem.weight_decay * float(np.linalg.norm(theta0))
    geo = kink_geometry(pieces, net, ks, tol.rank)
    stats.likq, stats.likq_rank = geo.likq, geo.rank
    st.lap("forward")
    if geo.likq:
        fo = first_order_likq(geo, ks, scale, tol.gradient)
    else:
        fo = first_order_patterns(pieces, net, ks, scale, tol.gradient, max_patterns)
        if fo is None:
            n0 = sum(g.rho == 0 for g in ks.groups)
            st.lap("first_order")
            return _finish(st, Reason.KINK_QUALIFICATION, ks, None, None,
                           detail=_likq_detail(geo, ks) + f"; the first order needs 2^{n0} sign patterns, over "
                           f"max_patterns={max_patterns}: not decided")
        stats.patterns = fo.patterns
    st.margins.extend(fo.margins)
    st.lap("first_order")
    stats.output_gradient_norm, stats.output_gradient_scale = fo.gamma_norm, scale
    if fo.candidate is not None:
        eta, slope, test, group = fo.candidate
        reason = Reason.TANGENT_GRADIENT_DESCENT if test == "tangent gradient" else (
            Reason.RAY_DESCENT if test == "extreme ray" else Reason.CONE_DESCENT)
        d = DeepDirection(np.asarray(eta, float), tuple(net.shapes))
        return _verified(st, pieces, ks, [(d, float("nan"))], 1, test, reason, slope, fo, None)
    quot = quotient_basis(net, fwd, masks, problem.weight_decay, tol.rank)
    if geo.likq:
        st.established.append("first-order stationary" + (f" ({fo.L} flat rays, {fo.K} both ways)" if ks.groups else
                                                          ": gradient zero, no kink"))
        stats.flat_groups, stats.both_flat_groups = fo.L, fo.K
        so = second_order_deep(pieces, net, ks, geo, fo, quot, tol, bud, solver, progress)
    else:
        st.established.append(f"first-order stationary: all {fo.patterns} sign patterns of the order-0 kink groups ("
                              + _likq_detail(geo, ks) + ")")
        so = second_order_cells(pieces, net, ks, geo, fo, quot, tol, bud, solver, progress)
        stats.cells, stats.cell_bound, stats.critical_faces = so.cells, so.cell_bound, so.faces
    st.lap("second_order")
    st.margins.extend(so.margins)
    stats.qps, stats.solver = so.records, so.solver
    stats.n_icqp_planned, stats.n_params_reduced = so.n_icqp_planned, so.n_params_reduced
    stats.hessian_norm, stats.eig_tol = so.hessian_norm, so.eig_tol
    stats.deep_quotient, stats.hessian_products = quot.to_dict(), pieces.products
    if so.inconclusive:
        detail = so.inconclusive if geo.likq else _likq_detail(geo, ks) + "; " + so.inconclusive
        return _finish(st, so.reason or second_order_cause(so.inconclusive), ks, fo, so, detail=detail)
    if so.outcome == Outcome.NEGATIVE:
        reason = {"ECQP": Reason.ECQP_DESCENT, "critical face": Reason.FACE_DESCENT}.get(so.source, Reason.ICQP_DESCENT)
        cands = so.candidates or [(so.direction, so.curvature)]
        return _verified(st, pieces, ks, [(d, 0.5 * c) for d, c in cands], 2, so.source, reason, 0.0, fo, so)
    st.established += _second_order_established(so, quot, geo.likq)
    return _finish(st, Reason.SOSP if so.outcome == Outcome.ZERO else Reason.MINIMUM, ks, fo, so)


def _second_order_established(so: DeepSecondOrder, quot, likq: bool) -> list[str]:
    """What a second order without descent established (cells and faces without LIKQ, the QPs, the quotient)."""
    out = [] if likq else [f"{so.cells} cells of the switching groups (at most {so.cell_bound}), {so.faces} critical "
                           "face(s) beyond the held kinks"]
    ecqp = next((q for q in so.records if q.kind == "ECQP"), None)
    if ecqp is not None:
        out.append(f"ECQP {ecqp.outcome}")
    n_icqp = sum(q.kind == "ICQP" for q in so.records)
    if n_icqp:
        out.append(f"{n_icqp} ICQP(s) without negative curvature")
    if quot.U.shape[1]:
        out.append(f"quotient: {quot.orbits} rescaling orbit(s), dead unit(s) {quot.dead}, affine unit(s) "
                   f"{quot.affine}, {quot.layer1_flat} flat layer-1 direction(s), {quot.silent_weights} "
                   "silent weight(s)")
    return out


def _interpolates(problem: DeepProblem, out: np.ndarray, r: np.ndarray) -> bool:
    """The one-hidden-layer interpolation ending (a nonnegative loss at its targets to rounding)."""
    return (problem.weight_decay == 0 and problem.loss.zero_at_targets and bool(np.any(r))
            and interpolates(out, problem.Y))


def _likq_detail(geo, ks) -> str:
    n0 = sum(g.rho == 0 for g in ks.groups)
    return (f"the kink qualification fails: {geo.n} switching groups ({n0} of order 0) over {ks.M} kinks have "
            f"gradient rank {geo.rank}")


def _verified(st: _State, pieces: Pieces, ks, cands: list, order: int, test: str, reason: Reason,
              slope: float, fo, so) -> tuple[CheckResult, list]:
    """Section 4: a predicted descent counts once the true risk drops; ``cands`` ``(direction, curvature)`` are
    tried in order (the most negative first), an order-2 curve as a straight line first."""
    problem = st.problem
    for d, curvature in cands:
        tries = [DeepDirection(d.eta, d.shapes), d] if d.zeta is not None else [d]
        for cand in tries:
            v = verify_deep(problem, cand.normalized())
            if v.verified:
                st.lap("verify")
                cert = DescentCertificate(cand.normalized(), order, test + (" (curve)" if cand.zeta is not None else
                                                                            ""), None, slope, curvature, v.step,
                                          v.decrease, st.value, st.value - v.decrease,
                                          _radius(pieces, st.problem, cand.normalized()))
                return _finish(st, reason, ks, fo, so, descent=cert)
    st.lap("verify")
    curvature = cands[0][1]
    detail = (f"{test} predicted a descent (slope {slope:.3g}, curvature {curvature:.3g}) that the line search could "
              f"not confirm above the noise {v.noise:.3g}")
    return _finish(st, Reason.UNVERIFIED_DESCENT, ks, fo, so, detail=detail)


@dataclass(frozen=True)
class DeepVerification:
    verified: bool
    step: float
    decrease: float
    noise: float
    n_evaluations: int


def verify_deep(problem: DeepProblem, d: DeepDirection, max_halvings: int = 100) -> DeepVerification:
    """``R(theta0 + d.displacement(t)) - R(theta0)`` for ``t = t0 2^-j`` (``t0 = max(1, |theta0|)``), each
    computed below the rounding of ``R`` with its own rounding bound
    (:func:`~sospcheck.deep.stratum.deep_risk_change_and_noise`), the search by :func:`line_search_decrease`."""
    theta0, net = problem.net.vector(), problem.net

    def change_at(t: float) -> tuple[float, float]:
        return deep_risk_change_and_noise(net, net.with_vector(theta0 + d.displacement(t)), problem.X, problem.Y,
                                          problem.loss, problem.weight, problem.weight_decay)

    return line_search_decrease(change_at, max(1.0, float(np.linalg.norm(theta0))), max_halvings)


def line_search_decrease(change_at: Callable[[float], tuple[float, float]], t0: float,
                         max_halvings: int = 100) -> DeepVerification:
    """The largest decrease ``-change_at(t)[0]`` over ``t = t0 2^-j`` that exceeds its rounding bound
    ``change_at(t)[1]``, stopping once a verified decrease shrinks with ``t`` (as
    :func:`sospcheck.verify.verify_descent`). A step counts only when the next, halved step lowers ``R``
    too: a decrease at one far step with ``R`` rising nearer the point says nothing about its neighbourhood."""
    t = t0
    best_t, best_dec, best_noise, n = 0.0, -np.inf, 0.0, 0
    prev_t, prev_dec, prev_noise = 0.0, -np.inf, 0.0
    for _ in range(max_halvings):
        n += 1
        change, noise = change_at(t)
        dec = -change
        if prev_dec > max(prev_noise, best_dec) and dec > noise:
            best_t, best_dec, best_noise = prev_t, prev_dec, prev_noise
        elif best_dec > best_noise and dec < prev_dec:
            break
        prev_t, prev_dec, prev_noise = t, dec, noise
        t *= 0.5
    return DeepVerification(bool(best_dec > best_noise), best_t, float(best_dec), float(best_noise), n)


def _radius(pieces: Pieces, problem: DeepProblem, d: DeepDirection) -> float:
    """Smallest step at which an off-kink pre-activation reaches its kink at the first-order rate along ``eta``
    (informational: for a deep network the local model is exact to second order only)."""
    fwd = deep_forward(problem.net, problem.X)
    S = [pieces._t(np.where(np.isnan(b), problem.net.s_plus, b)) for b in pieces.base]
    rates = pieces.directional(S, d.eta)
    best = np.inf
    for N, dN, b in zip(fwd.N, rates, pieces.base):
        off = ~np.isnan(b) & (N * dN < 0)
        if off.any():
            best = min(best, float(np.min(np.abs(N[off]) / np.abs(dN[off]))))
    return best


def _finish(st: _State, reason: Reason, ks, fo: FirstOrder | None, so: DeepSecondOrder | None,
            detail: str | None = None, descent: DescentCertificate | None = None) -> tuple[CheckResult, list]:
    problem, stats = st.problem, st.stats
    stats.neurons = _unit_records(problem.net, ks, fo, so, stats)
    result = CheckResult(reason, st.value, descent, stats, st.tol, st.budget, st.timings, st.established,
                         reason=detail, net=problem.net, weight_decay=problem.weight_decay)
    result.margins = st.margins.items()
    return result, result.margins


def _unit_records(net: DeepNet, ks, fo: FirstOrder | None, so, stats: DeepStats) -> list[NeuronRecord]:
    """Per hidden unit (layer-major index): kinks, flat groups led by it, what decided it."""
    units = [(l, k) for l, w in enumerate(net.widths) for k in range(w)]
    if ks is None:
        return [NeuronRecord(u, 0) for u in range(len(units))]
    M = {u: 0 for u in units}
    for kk in ks.kinks:
        M[(kk.l, kk.k)] += 1
    L = {u: 0 for u in units}
    Kc = {u: 0 for u in units}
    if fo is not None and fo.flat_plus is not None:
        for q, g in enumerate(ks.groups):
            kk = ks.kinks[g.rep]
            L[(kk.l, kk.k)] += int(fo.flat_plus[q] or fo.flat_minus[q])
            Kc[(kk.l, kk.k)] += int(fo.flat_plus[q] and fo.flat_minus[q])
    dead = set(tuple(u) for u in stats.deep_quotient.get("dead_units", []))
    out = []
    for idx, u in enumerate(units):
        if fo is None or fo.candidate is not None:
            dec = Decision.NOT_REACHED
        elif u in dead:
            dec = Decision.DEAD
        elif M[u] == 0:
            dec = Decision.DIFFERENTIABLE
        elif fo.flat_plus is None:
            dec = Decision.STATIONARY if fo.stationary else Decision.NOT_REACHED
        else:
            dec = Decision.FLAT_RAYS if L[u] else Decision.RAYS_ASCEND
        out.append(NeuronRecord(idx, M[u], dec, L[u] if fo is not None and fo.flat_plus is not None else None,
                                Kc[u] if fo is not None and fo.flat_plus is not None else None))
    return out
