"""SOSP-CHECK end to end: model -> boundary geometry -> first order -> second order -> verification -> result.

DESIGN.md section 3; every returned direction is verified on the true risk (section 4). Each step returns
a small record; :func:`_analyze` runs them once, recording each thresholded decision's margin, and the
fragility probe (section 6) re-runs only at a tolerance scaling that some margin says could flip.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import math
import time

import numpy as np

from .device_data import on_host, placement
from .degenerate import DESCENT, OVER_BUDGET, DegenerateFirstOrder, degenerate_neuron
from .degenerate_second import NeuronFaces, neuron_faces
from .first_order import (NeuronTest, OutputLayerTest, neuron_tests, output_layer_test, ratios, record_column_sides,
                          record_sides, steepest_ray)
from .geometry import boundary_with_sides
from .losses import INTERPOLATION_ULPS, interpolates
from .margins import Margins, fragility_verdicts, rerun_factors
from .model import Direction, Forward, TwoLayerNet
from .nearby import Nearby, near_zero_neurons, zero_neurons
from .nearby_mode import nearby_config, nearby_verdict
from .options import Budget, Tolerances
from .point import Point, Problem
from .neuron_records import neuron_records
from .radius import Radius, certified_radius
from .result import CheckResult, DescentCertificate, Reason, Stats, Verdict
from .second_order import Outcome, SecondOrderOutcome, second_order_test
from .snap import snap_to_kinks
from .validation import validate_engine, validate_inputs, validate_progress, validate_with_forward
from .verify import remembered_descent
from .zero_output import zero_output_mask, zero_output_ratios

__all__ = ["check", "validate_inputs"]


def check(net: TwoLayerNet, X, Y, loss="squared", reduction: str = "sum", weight_decay: float = 0.0,
          tolerances: Tolerances | dict | None = None, snap: bool = False, budget: Budget | dict | None = None,
          fragility: bool = True, snap_tol: float = 1e-5, seed: int = 0, solver: str = "auto",
          backend: str = "numpy", device: str | None = None,
          progress: Callable[[str, int, int | None], None] | None = None,
          nearby: bool | Nearby | dict = False, nearby_radius: float | None = None) -> CheckResult:
    """Is ``net`` a local minimum, an SOSP, or not (with a verified descent direction) for ``(X, Y)``?

    Args:
        net: the weights. X: (m, dx) inputs. Y: targets as the loss expects them.
        loss: "squared", "logistic", "cross_entropy", or a ``(value, grad, hess)`` triple.
        reduction: "sum" or "mean". weight_decay: ``lam`` in ``+ lam/2 |z|^2``.
        tolerances: :class:`Tolerances` (or a dict of its fields). budget: :class:`Budget`.
        snap: first move near-boundary points onto their kinks and refit the output layer (kept only
            when the refit moves it by at most ``snap_tol * |z|``, or ``nearby_radius * |z|`` in
            nearby mode); the verdict is then about the snapped point, and the summary says so.
        fragility: the verdicts with all tolerances x10 and /10, and a flag when one differs; the
            analysis is re-run only at a scaling that some decision's margin could flip.
        snap_tol: the near-boundary threshold for ``snap`` (relative, like ``tolerances.boundary``).
        seed: for the few random probes (zero-output neurons).
        solver: second-order solver, "dense", "matrix_free" (Hessian products only), or "auto"
            (dense up to ``budget.max_dense_params`` reduced parameters).
        backend: "numpy", or "torch": the data on ``device`` (e.g. "cuda"; default: a GPU when available)
            for every pass over them (forward passes, first-order products, verification, Hessian
            products; ``sospcheck.device_data``). Needs the ``torch`` extra.
        progress: called as ``progress(phase, done, total)`` (``total`` None when unknown) as the
            phases, the ICQPs, the Hessian-vector products and the re-runs advance; e.g. the CLI's
            progress bars.
        nearby: nearby mode (:mod:`sospcheck.nearby_mode`, DESIGN.md 8.6): also find ``z*``, the exact
            stationary point next to ``net`` (negligible neurons zeroed, near-kink points held on their
            kinks, Newton on that stratum) within ``nearby_radius``, and check it with tolerances near
            rounding (``nearby_mode.NEARBY_TOLERANCES``); ``result.nearby`` holds that verdict, the
            distance, ``R(z*) - R(z)`` and the steps, or says that no stationary point lies within the
            radius. True: the defaults; a :class:`~sospcheck.nearby.Nearby` (or a dict of its fields)
            sets the thresholds. The rest of the result stays about ``net`` (or the snapped point).
        nearby_radius: the largest move to ``z*``, relative to ``|z|`` (default 1e-3); needs ``nearby``.

    Returns:
        :class:`CheckResult`.
    """
    validate_engine(solver, backend, device)
    # backend "torch": the data go to the device once and every pass over them runs there (device_data)
    with placement(device) if backend == "torch" else on_host():
        return _check(net, X, Y, loss, reduction, weight_decay, tolerances, snap, budget, fragility, snap_tol, seed,
                      (solver, backend, device), progress, nearby, nearby_radius)


def _check(net, X, Y, loss, reduction, weight_decay, tolerances, snap, budget, fragility, snap_tol, seed, engine,
           progress, nearby, nearby_radius) -> CheckResult:
    """:func:`check` once the engine is set up."""
    X, Yp, lossobj, weight, lam, fwd = validate_with_forward(net, X, Y, loss, reduction, weight_decay)
    fwd = None if snap else fwd  # the point's own pass; a snapped point makes its own (not held beside it)
    validate_progress(progress)
    nearby_cfg = nearby_config(nearby, nearby_radius)
    notify = progress or (lambda phase, done, total=None: None)
    tol = Tolerances.from_any(tolerances)
    bud = Budget.from_any(budget)
    user = Problem(net, X, Yp, lossobj, weight, lam)
    problem = user
    snap_info = None
    t0 = time.perf_counter()
    if snap:
        if not (isinstance(snap_tol, (int, float)) and math.isfinite(snap_tol) and snap_tol >= 0):
            raise ValueError(f"`snap_tol` must be a finite number >= 0, got {snap_tol!r}")
        refit_radius = nearby_cfg.radius * net.as_direction().norm() if nearby_cfg is not None else None
        snapped, snap_info = snap_to_kinks(net, X, Yp, lossobj, weight, lam, snap_tol, refit_radius)
        problem = problem.at(snapped)
        notify("snap", 1, 1)
    t_snap = time.perf_counter() - t0

    def at(problem: Problem, tol: Tolerances, progress=progress, radius: bool = False, fwd=None) -> CheckResult:
        return _check_point(problem, tol, bud, seed, engine, fragility, notify, progress, lossobj.name, reduction,
                            radius, fwd)

    result = at(problem, tol, fwd=fwd)
    del fwd  # nearby mode's analyses make their own passes
    if snap:
        result.timings = {"snap": t_snap, **result.timings}
    result.snap = snap_info
    if nearby_cfg is not None:
        t1 = time.perf_counter()
        result.nearby = nearby_verdict(net, X, Yp, lossobj, weight, lam, nearby_cfg,
                                       lambda z, tols: at(user.at(z), tols, None, True), notify)
        result.timings["nearby"] = time.perf_counter() - t1
    return result


def _check_point(problem: Problem, tol: Tolerances, bud: Budget, seed: int, engine: tuple, fragility: bool,
                 notify: Callable, progress, loss_name: str, reduction: str, radius: bool = False,
                 fwd: Forward | None = None) -> CheckResult:
    """The check at one point: the analysis, the near-zero probe, the fragility re-runs (sharing the
    analysis's point, with its line searches), and with ``radius`` the certified radius of a strict
    local minimum (:func:`~sospcheck.radius.certified_radius`); ``fwd``: the point's pass when made."""
    analysis = _analyze(problem, tol, bud, seed, engine, progress, fwd)
    result = analysis.result
    if radius and result.verdict == Verdict.LOCAL_MINIMUM:
        t0 = time.perf_counter()
        result.certified_radius = analysis.radius()
        result.timings["radius"] = time.perf_counter() - t0
    result.loss, result.reduction = loss_name, reduction
    net = problem.net
    near = near_zero_neurons(net, problem.X, problem.Y, tol.near_zero)
    if near:
        notify("near-zero neurons: check with them zeroed", 0, 1)
        probe = _analyze(problem.at(zero_neurons(net, near)), tol, bud, seed, engine).result
        result.stats.near_zero = {"neurons": near, "loss_change_if_zeroed": probe.loss_value - result.loss_value,
                                  "verdict_if_zeroed": probe.verdict.value}
    if fragility:
        t1 = time.perf_counter()
        result.fragility = fragility_verdicts(
            result.verdict, analysis.factors,
            lambda factor: _analyze(problem, tol.scaled(factor), bud, seed, engine, None,
                                    analysis.point).result.verdict, notify)
        result.fragile = any(v != result.verdict.value for v in result.fragility.values())
        result.timings["fragility"] = time.perf_counter() - t1
    return result


_PHASES = ("forward", "first_order", "second_order", "verify")


class _Clock:
    """Wall time per phase, and ``progress`` told as each phase completes."""

    def __init__(self, progress=None):
        self.timings: dict[str, float] = {}
        self.progress = progress
        self.clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self.clock
        self.clock = now
        if self.progress is not None:
            self.progress("check phases (forward, first order, second order, verify)", _PHASES.index(name) + 1,
                          len(_PHASES))


@dataclass(frozen=True)
class Candidate:
    """A predicted descent direction, before verification; ``symmetric``: ``+-direction`` are equally
    good to second order (the ECQP), take the one with ``first(d) <= 0``."""

    direction: Direction
    order: int
    test: str
    reason: Reason
    neuron: int | None = None
    symmetric: bool = False


@dataclass(frozen=True)
class Ending:
    """How a step ended the analysis: the reason code, the details of an inconclusive one, the certificate
    of a verified descent."""

    reason: Reason
    detail: str | None = None
    descent: DescentCertificate | None = None


@dataclass(frozen=True)
class Start:
    """The point, its boundary pairs and the margins of the boundary decisions."""

    pt: Point
    boundary: np.ndarray
    margins: list


@dataclass(frozen=True)
class DegenerateStep:
    """Step 3 for a neuron whose boundary vectors are dependent (DESIGN.md section 9): the first order over
    the cells of its kink arrangement and, when the check goes on to the second order, its critical faces."""

    first: DegenerateFirstOrder
    faces: NeuronFaces | None = None


@dataclass(frozen=True)
class FirstOrder:
    """Steps 1-3: the tests that ran (``neurons`` None before step 2; ``rays_examined`` after step 3), a
    predicted descent or an ending (both None: on to the second order), what they established, margins;
    ``degenerate``: neuron -> :class:`DegenerateStep` for the neurons step 3 decided by their cells."""

    output: OutputLayerTest
    neurons: list[NeuronTest] | None = None
    rays_examined: bool = False
    candidate: Candidate | None = None
    ending: Ending | None = None
    established: tuple = ()
    margins: tuple = ()
    degenerate: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SecondOrder:
    """Step 4 read off: a predicted descent, or an ending with what it established."""

    outcome: SecondOrderOutcome
    candidate: Candidate | None = None
    ending: Ending | None = None
    established: tuple = ()


def forward_and_boundary(problem: Problem, tol: Tolerances, fwd: Forward | Point | None = None) -> Start:
    """One forward pass (unless ``fwd``, the problem's pass or its point, is given) and the boundary pairs
    ``|N_ik| <= boundary |Z_k| max|xbar|`` (DESIGN.md section 1)."""
    pt = fwd if isinstance(fwd, Point) else problem.point(fwd)
    boundary, on, off, threshold = boundary_with_sides(pt.fwd.N, pt.net.Z, pt.fwd.Xbar, tol.boundary)
    margins = Margins()
    record_column_sides(margins, "boundary |N_ik|", on, off, threshold)
    return Start(pt, boundary, margins.items())


def interpolation_ending(pt: Point) -> Ending | None:
    """A nonnegative loss at outputs equal to the targets up to rounding is at its global minimum, where the
    relative gradient tests would measure only rounding (exactly equal outputs have ``r = 0``: no noise)."""
    if pt.weight_decay == 0 and pt.loss.zero_at_targets and np.any(pt.r) and interpolates(pt.fwd.out, pt.Y):
        return Ending(Reason.INTERPOLATION)
    return None


def first_order(pt: Point, boundary: np.ndarray, tol: Tolerances, budget: Budget | None = None) -> FirstOrder:
    """Steps 1-3 (DESIGN.md section 3): the output-layer gradient, one BVLS per neuron, the extreme rays, and
    the cells of the neurons whose boundary vectors are dependent (section 9; ``budget.max_cells``)."""
    margins = Margins()
    ol = output_layer_test(pt, tol)
    margins.add("output-layer gradient", ol.ratio, 1.0)
    if not ol.stationary:
        return FirstOrder(ol, candidate=output_candidate(pt.net, ol), margins=tuple(margins.items()))
    established = ["output layer stationary"]
    neurons = neuron_tests(pt, boundary, tol)
    record_sides(margins, "neuron subgradient |vt_k|", [nt.residual_ratio for nt in neurons])
    zero_output = zero_output_ratios(pt, tol.a_zero)
    if pt.weight_decay == 0:
        record_sides(margins, "zero output |w_k|", zero_output)
    candidate = clarke_candidate(pt.net, neurons, zero_output <= 1.0)
    if candidate is not None:
        return FirstOrder(ol, neurons, candidate=candidate, established=tuple(established),
                          margins=tuple(margins.items()))
    established.append("Clarke stationary")
    candidate, ending, degenerate = ray_step(pt, neurons, tol, margins, budget)
    if candidate is None and ending is None:
        established.append("no descent along extreme rays" if boundary.any() else "differentiable: gradient zero")
        if degenerate:
            established.append("no descent in the cells of the degenerate neuron(s) (neuron: cells) "
                               + str({k: st.first.n_cells for k, st in degenerate.items()}))
    return FirstOrder(ol, neurons, True, candidate, ending, tuple(established), tuple(margins.items()), degenerate)


def output_candidate(net: TwoLayerNet, ol: OutputLayerTest) -> Candidate:
    """Step 1 failed: the negative output-layer gradient descends."""
    G_b2 = None if ol.G_b2 is None else -ol.G_b2
    return Candidate(Direction.output(net, -ol.G_W2, G_b2), 1, "output-layer gradient", Reason.OUTPUT_LAYER_DESCENT)


def clarke_candidate(net: TwoLayerNet, neurons: list[NeuronTest], zero_output: np.ndarray) -> Candidate | None:
    """Step 2: ``-vt_k`` of the neuron farthest (relative to its scale) from Clarke stationarity; None
    when every neuron is stationary. Zero-output neurons are left to the second order: their slopes
    are proportional to ``w_k``, rounding noise in the loss (:func:`sospcheck.zero_output.zero_output_ratios`)."""
    moving = [nt for nt in neurons if not nt.stationary and not zero_output[nt.k]]
    if not moving:
        return None
    nt = max(moving, key=lambda n: n.residual / n.scale)
    dZ = np.zeros_like(net.Z)
    dZ[nt.k] = -nt.vt
    if nt.M == 0:
        return Candidate(Direction.hidden(net, dZ), 1, "neuron gradient", Reason.NEURON_GRADIENT_DESCENT, nt.k)
    return Candidate(Direction.hidden(net, dZ), 1, "Clarke subgradient (BVLS)", Reason.CLARKE_DESCENT, nt.k)


def ray_step(pt: Point, neurons: list[NeuronTest], tol: Tolerances, margins: Margins,
             budget: Budget | None = None) -> tuple[Candidate | None, Ending | None, dict]:
    """Step 3: the steepest descending extreme ray; then, where Assumption 2 fails and rays do not exist,
    the cells of the kink arrangements (:func:`degenerate_step`). The zero-output, flat-ray and cell
    decisions' margins go to ``margins``."""
    net = pt.net
    zero_output = zero_output_mask(pt, tol.a_zero)
    flat = np.hstack([nt.flat_ratios for nt in neurons])
    for name, row in zip(("flat ray |a_ik|", "flat ray |s*_i - s_plus|", "flat ray |s*_i - s_minus|"), flat):
        record_sides(margins, name, row)
    ray = steepest_ray(neurons, zero_output)
    if ray is not None:
        dZ = np.zeros_like(net.Z)
        dZ[ray.k] = ray.direction
        return Candidate(Direction.hidden(net, dZ), 1, "extreme ray", Reason.RAY_DESCENT, ray.k), None, {}
    bad = [nt for nt in neurons if nt.M and not nt.assumption2 and not zero_output[nt.k]]
    if not bad:
        return None, None, {}
    return degenerate_step(pt, bad, tol, budget or Budget(), margins)


def degenerate_step(pt: Point, bad: list[NeuronTest], tol: Tolerances, budget: Budget,
                    margins: Margins) -> tuple[Candidate | None, Ending | None, dict]:
    """Step 3 for the neurons whose boundary vectors are dependent (DESIGN.md section 9): each one's
    steepest slope over the cells of its kink arrangement (:func:`sospcheck.degenerate.degenerate_neuron`,
    counted against ``budget.max_cells``). The steepest descent (relative to the neuron's scale) is the
    candidate; else a neuron over budget ends the check; else each neuron's critical faces for step 4."""
    net = pt.net
    steps = {nt.k: DegenerateStep(degenerate_neuron(pt, nt, tol, budget.max_cells)) for nt in bad}
    done = [st.first for st in steps.values() if st.first.status != OVER_BUDGET]
    record_sides(margins, "degenerate neuron: steepest cell slope", [ratios(f.slope, f.threshold) for f in done])
    descents = [(k, st.first) for k, st in steps.items() if st.first.status == DESCENT]
    if descents:
        k, f = min(descents, key=lambda kf: kf[1].slope / kf[1].scale)
        dZ = np.zeros_like(net.Z)
        dZ[k] = f.direction
        return Candidate(Direction.hidden(net, dZ), 1, "arrangement cell", Reason.CELL_DESCENT, k), None, steps
    over = [k for k, st in steps.items() if st.first.status == OVER_BUDGET]
    if over:
        detail = "; ".join(f"neuron {k} (M_k = {steps[k].first.M}, rank {steps[k].first.rank}): "
                           f"{steps[k].first.cells.message}" for k in over)
        return None, Ending(Reason.CELL_BUDGET, detail + "; no first-order descent was found elsewhere"), steps
    by_k = {nt.k: nt for nt in bad}
    steps = {k: DegenerateStep(st.first, neuron_faces(pt, by_k[k], st.first)) for k, st in steps.items()}
    record_sides(margins, "degenerate neuron: flat ray |f_k(rho)|",
                 np.concatenate([st.faces.ratios for st in steps.values()]))
    return None, None, steps


# Step 4's inconclusive causes, as second_order_test words them, and their codes.
_SECOND_ORDER_CAUSES = (
    ("zero-output neuron", Reason.ZERO_OUTPUT_UNDECIDED),
    ("critical faces exceed budget", Reason.FACE_BUDGET),
    ("ICQPs exceed budget", Reason.ICQP_BUDGET),
    ("flat-ray constraints are linearly dependent", Reason.DEPENDENT_FLAT_RAYS),
    ("ECQP eigenvalue not computed", Reason.EIGENVALUE_FAILED),
    ("Qww is (nearly) singular", Reason.SINGULAR_UNRESOLVED),
    ("copositivity of a", Reason.COPOSITIVITY_UNDECIDED),
    ("copositivity witness", Reason.SCHUR_INACCURATE),
)
_SECOND_ORDER_DESCENT = {"ECQP": Reason.ECQP_DESCENT, "ICQP": Reason.ICQP_DESCENT,
                         "critical-face ICQP": Reason.FACE_DESCENT, "zero_output": Reason.ZERO_OUTPUT_DESCENT}


def second_order_cause(text: str) -> Reason:
    """The reason code of an inconclusive second order, from the words of its message."""
    return next((r for phrase, r in _SECOND_ORDER_CAUSES if phrase in text), Reason.SECOND_ORDER_UNDECIDED)


def second_order(so: SecondOrderOutcome) -> SecondOrder:
    """Step 4's outcome read off (DESIGN.md section 3): T3 a predicted descent, T1 a minimum, T2 an SOSP."""
    if so.inconclusive:
        return SecondOrder(so, ending=Ending(second_order_cause(so.inconclusive), so.inconclusive))
    if so.outcome == Outcome.NEGATIVE:
        return SecondOrder(so, Candidate(so.direction, 2, so.source, _SECOND_ORDER_DESCENT[so.source],
                                         symmetric=so.source == "ECQP"))
    quot, established = so.quotient, []
    if quot.zero_output_neurons:
        established.append(f"zero-output neuron(s) {quot.zero_output_neurons}: no descent of order <= 2 (g == 0)")
    if quot.inactive_directions:
        established.append("neuron(s) active on few points: directions orthogonal to those points quotiented "
                           f"(neuron: dims) {quot.inactive_by_name()}")
    if quot.bias_shift_neurons:
        established.append(f"affine neuron(s) {quot.bias_shift_neurons}: bias shift against b2 is exactly "
                           "flat (quotiented)")
    for kind, groups in (("affine", quot.affine_groups), ("same-pattern", quot.pattern_groups),
                         ("duplicate", quot.duplicate_groups)):
        if groups:
            established.append(f"{kind} neuron group(s) {groups}: the flat directions they share are quotiented")
    ecqp = next((q for q in so.records if q.kind == "ECQP"), None)
    if ecqp is not None:
        established.append(f"ECQP {ecqp.outcome}")
    n_icqp = sum(q.kind == "ICQP" for q in so.records)
    if n_icqp:
        faces = " (flat rays and critical faces)" if so.source == "critical-face ICQP" else ""
        established.append(f"{n_icqp} ICQP(s){faces} without negative curvature")
    reason = Reason.SOSP if so.outcome == Outcome.ZERO else Reason.MINIMUM
    return SecondOrder(so, ending=Ending(reason), established=tuple(established))


def verify(pt: Point, boundary: np.ndarray, c: Candidate) -> Ending:
    """Section 4: a predicted descent counts only once the line search lowers the true risk."""
    d = c.direction.normalized()
    if c.symmetric and pt.local_terms(d, boundary)[0] > 0:
        d = d.scaled(-1.0)
    v = remembered_descent(pt, d, boundary)
    if not v.verified:
        return Ending(Reason.UNVERIFIED_DESCENT,
                      f"{c.test} predicted a descent direction (slope {v.slope:.3g}, curvature {v.curvature:.3g}) "
                      f"that the line search could not confirm above the noise {v.noise:.3g}")
    return Ending(c.reason, descent=DescentCertificate(d, c.order, c.test, c.neuron, v.slope, v.curvature, v.step,
                                                       v.decrease, v.loss_before, v.loss_after, v.validity_radius))


@dataclass
class Analysis:
    """One run of the steps: the result, and the tolerance factors its margins say could change it."""

    result: CheckResult
    factors: tuple[float, ...]
    radius: Callable[[], Radius]
    point: Point


def _analyze(problem: Problem, tol: Tolerances, bud: Budget, seed: int, engine: tuple, progress=None,
             fwd: Forward | Point | None = None) -> Analysis:
    """Steps 1-4 and the verification once, each a function returning its record (DESIGN.md section 3).
    ``fwd``: the problem's forward pass or point if made."""
    clock = _Clock(progress)
    st = forward_and_boundary(problem, tol, fwd)
    clock.lap("forward")
    first = so = None
    ending = interpolation_ending(st.pt)
    if ending is None:
        first = first_order(st.pt, st.boundary, tol, bud)
        ending = first.ending
    clock.lap("first_order")
    candidate = first.candidate if first is not None else None
    if ending is None and candidate is None:
        faces = [step.faces for step in first.degenerate.values()]
        so = second_order(second_order_test(st.pt, first.neurons, st.boundary, tol, bud, np.random.default_rng(seed),
                                            *engine, progress=progress, faces=faces))
        candidate, ending = so.candidate, so.ending
        clock.lap("second_order")
    if candidate is not None:
        ending = verify(st.pt, st.boundary, candidate)
        clock.lap("verify")
    sided = list(st.margins) + (list(first.margins) if first is not None else [])
    unsided = so.outcome.margins if so is not None else []
    result = _result(problem, st, first, so, ending, tol, bud, clock.timings)
    result.margins = sided + list(unsided)

    def radius() -> Radius:
        if so is None:  # the interpolation ending: a global minimum
            return Radius.interpolation()
        return certified_radius(st.pt, st.boundary, first.neurons, so.outcome, tol, bud.milp_time_limit)

    return Analysis(result, rerun_factors(sided, unsided), radius, st.pt)


def _result(problem: Problem, st: Start, first: FirstOrder | None, so: SecondOrder | None, ending: Ending,
            tol: Tolerances, bud: Budget, timings: dict) -> CheckResult:
    """Classification: the verdict's record, per-neuron decisions and what was established."""
    outcome = so.outcome if so is not None else None
    quotient = outcome.quotient if outcome is not None else None
    neurons = first.neurons if first is not None else None
    records = neuron_records(st.boundary.sum(axis=0), neurons, first is not None and first.rays_examined,
                             ending.descent.neuron if ending.descent is not None else None, quotient,
                             first.degenerate if first is not None else {})
    stats = Stats(m=problem.m, p=problem.net.n_params, neurons=records)
    if first is not None:
        stats.output_gradient_norm, stats.output_gradient_scale = first.output.norm, first.output.scale
    if outcome is not None:
        stats.qps, stats.solver, stats.quotient = outcome.records, outcome.solver, quotient
        stats.n_icqp_planned, stats.n_params_reduced = outcome.n_icqp_planned, outcome.n_params_reduced
        stats.hessian_products = outcome.products
        stats.hessian_norm, stats.eig_tol = outcome.hessian_norm, outcome.eig_tol
    established = list(first.established) if first is not None else [
        f"outputs interpolate the targets to rounding ({INTERPOLATION_ULPS:g} eps relative; loss >= 0, zero at "
        "the targets)"]
    if so is not None:
        established += so.established
    return CheckResult(ending.reason, st.pt.value, ending.descent, stats, tol, bud, timings, established,
                       reason=ending.detail, net=problem.net, weight_decay=problem.weight_decay)

