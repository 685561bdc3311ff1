"""SOSP-CHECK end to end: model -> boundary geometry -> first order -> second order -> verification -> result.

DESIGN.md section 3; every returned direction is verified on the true risk (section 4).
"""

from __future__ import annotations

from collections.abc import Callable

import math
import time

import numpy as np

from .first_order import neuron_tests, output_layer_test
from .geometry import boundary_mask
from .losses import Loss, get_loss, reduction_weight
from .model import Direction, TwoLayerNet, as_float_array
from .nearby import near_zero_neurons, zero_neurons
from .options import Budget, Tolerances
from .point import evaluate_point
from .result import CheckResult, DescentCertificate, Stats, Verdict
from .second_order import Outcome, second_order_test
from .snap import snap_to_kinks
from .validation import validate_inputs
from .verify import verify_descent
from .zero_output import zero_output_mask

__all__ = ["check", "validate_inputs"]




def check(net: TwoLayerNet, X, Y, loss="squared", reduction: str = "sum", weight_decay: float = 0.0,
          tolerances: Tolerances | dict | None = None, snap: bool = False, budget: Budget | dict | None = None,
          fragility: bool = True, snap_tol: float = 1e-5, seed: int = 0, solver: str = "auto",
          backend: str = "numpy", device: str | None = None,
          progress: Callable[[str, int, int | None], None] | None = None) -> CheckResult:
    """Is ``net`` a local minimum, an SOSP, or not (with a verified descent direction) for ``(X, Y)``?

    Args:
        net: the weights. X: (m, dx) inputs. Y: targets as the loss expects them.
        loss: "squared", "logistic", "cross_entropy", or a ``(value, grad, hess)`` triple.
        reduction: "sum" or "mean". weight_decay: ``lam`` in ``+ lam/2 |z|^2``.
        tolerances: :class:`Tolerances` (or a dict of its fields). budget: :class:`Budget`.
        snap: first move near-boundary points onto their kinks and refit the output layer.
        fragility: re-run the decisions with all tolerances x10 and /10 and flag a flipping verdict.
        snap_tol: the near-boundary threshold for ``snap`` (relative, like ``tolerances.boundary``).
        seed: for the few random probes (zero-output neurons).
        solver: second-order solver, "dense", "matrix_free" (Hessian products only), or "auto"
            (dense up to ``budget.max_dense_params`` reduced parameters).
        backend: "numpy", or "torch" for the Hessian products (``device`` e.g. "cuda"; default: a GPU
            when available). Needs the ``torch`` extra.
        progress: called as ``progress(phase, done, total)`` (``total`` None when unknown) as the
            phases, the ICQPs, the Hessian-vector products and the re-runs advance; e.g. the CLI's
            progress bars.

    Returns:
        :class:`CheckResult`.
    """
    X, Yp, lossobj, weight, lam = validate_inputs(net, X, Y, loss, reduction, weight_decay)
    if solver not in ("auto", "dense", "matrix_free"):
        raise ValueError(f"`solver` must be 'auto', 'dense' or 'matrix_free', got {solver!r}")
    if backend not in ("numpy", "torch"):
        raise ValueError(f"`backend` must be 'numpy' or 'torch', got {backend!r}")
    if backend == "torch":
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            raise ValueError("`backend='torch'` needs PyTorch: pip install 'sospcheck[torch]'") from exc
    engine = (solver, backend, device)
    report = progress or (lambda phase, done, total=None: None)
    tol = Tolerances.from_any(tolerances)
    bud = Budget.from_any(budget)
    snap_info = None
    t0 = time.perf_counter()
    if snap:
        if not (isinstance(snap_tol, (int, float)) and math.isfinite(snap_tol) and snap_tol >= 0):
            raise ValueError(f"`snap_tol` must be a finite number >= 0, got {snap_tol!r}")
        net, snap_info = snap_to_kinks(net, X, Yp, lossobj, weight, lam, snap_tol)
        report("snap", 1, 1)
    t_snap = time.perf_counter() - t0
    result = _analyze(net, X, Yp, lossobj, weight, lam, tol, bud, seed, engine, progress)
    if snap:
        result.timings = {"snap": t_snap, **result.timings}
    result.snap = snap_info
    result.loss, result.reduction = lossobj.name, reduction
    near = near_zero_neurons(net, X, Yp, tol.near_zero)
    if near:
        report("near-zero neurons: check with them zeroed", 0, 1)
        zeroed = zero_neurons(net, near)
        probe = _analyze(zeroed, X, Yp, lossobj, weight, lam, tol, bud, seed, engine)
        result.stats.near_zero = {"neurons": near, "loss_change_if_zeroed": probe.loss_value - result.loss_value,
                                  "verdict_if_zeroed": probe.verdict.value}
    if fragility:
        t1 = time.perf_counter()
        for j, (name, factor) in enumerate((("tolerances_x10", 10.0), ("tolerances_x0.1", 0.1))):
            report("fragility re-runs", j, 2)
            probe = _analyze(net, X, Yp, lossobj, weight, lam, tol.scaled(factor), bud, seed, engine)
            result.fragility[name] = probe.verdict.value
        report("fragility re-runs", 2, 2)
        result.fragile = any(v != result.verdict.value for v in result.fragility.values())
        result.timings["fragility"] = time.perf_counter() - t1
    return result


_PHASES = ("forward", "first_order", "second_order", "verify")
INTERPOLATION_ULPS = 64.0


def interpolates(out: np.ndarray, Y: np.ndarray) -> bool:
    """Every ``|out_i - y_i| <= 64 eps (|out_i| + |y_i|)``: equal up to the rounding of a forward pass."""
    Y = np.asarray(Y, float).reshape(out.shape)
    return bool(np.all(np.abs(out - Y) <= INTERPOLATION_ULPS * np.finfo(float).eps * (np.abs(out) + np.abs(Y))))


def _analyze(net, X, Yp, lossobj, weight, lam, tol: Tolerances, bud: Budget, seed: int, engine: tuple,
             progress=None) -> CheckResult:
    timings: dict = {}
    clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - clock
        clock = now
        if progress is not None:
            progress("check phases (forward, first order, second order, verify)", _PHASES.index(name) + 1,
                     len(_PHASES))

    pt = evaluate_point(net, X, Yp, lossobj, weight, lam)
    boundary = boundary_mask(pt.fwd.N, net.Z, pt.fwd.Xbar, tol.boundary)
    M_k = boundary.sum(axis=0)
    stats = Stats(m=X.shape[0], p=net.n_params, M=int(M_k.sum()), M_k=M_k.tolist())
    established: list[str] = []
    res = CheckResult(Verdict.INCONCLUSIVE, "", pt.value, None, stats, tol, bud, timings, established,
                      net=net, weight_decay=lam)
    lap("forward")

    def descent(d: Direction, order: int, test: str, neuron=None, symmetric=False) -> CheckResult:
        lap("first_order" if order == 1 else "second_order")
        d = d.normalized()
        if symmetric and pt.local_terms(d, boundary)[0] > 0:
            d = d.scaled(-1.0)
        v = verify_descent(pt, d, boundary)
        lap("verify")
        if not v.verified:
            res.reason = (f"{test} predicted a descent direction (slope {v.slope:.3g}, curvature {v.curvature:.3g}) "
                          f"that the line search could not confirm above the noise {v.noise:.3g}")
            res.message = "a predicted descent direction was not verified on the true loss"
            return res
        res.verdict = Verdict.DESCENT
        res.descent = DescentCertificate(d, order, test, neuron, v.slope, v.curvature, v.step, v.decrease,
                                         v.loss_before, v.loss_after, v.validity_radius)
        res.message = (f"order-{order} descent direction from {test}"
                       + (f" (neuron {neuron})" if neuron is not None else "")
                       + f", verified: the loss drops by {v.decrease:.4g} at step {v.step:.4g}")
        return res

    # A nonnegative loss at outputs equal to the targets up to rounding is at its global minimum;
    # the relative gradient tests would only measure rounding noise there. (Exactly equal outputs
    # have r = 0 exactly, and the tests below decide them without noise.)
    if lam == 0 and lossobj.zero_at_targets and np.any(pt.r) and interpolates(pt.fwd.out, Yp):
        res.verdict = Verdict.LOCAL_MINIMUM
        res.message = ("global minimum to floating-point precision: every output equals its target up to rounding "
                       f"({INTERPOLATION_ULPS:g} eps relative) and the loss is nonnegative with minimum 0 there")
        established.append("outputs interpolate the targets to rounding (loss >= 0, zero at the targets)")
        lap("first_order")
        return res

    # Step 1: output layer
    ol = output_layer_test(pt, tol)
    stats.output_gradient_norm, stats.output_gradient_scale = ol.norm, ol.scale
    if not ol.stationary:
        G_b2 = None if ol.G_b2 is None else -ol.G_b2
        return descent(Direction.output(net, -ol.G_W2, G_b2), 1, "output-layer gradient")
    established.append("output layer stationary")

    # Step 2: Clarke stationarity, one BVLS per neuron
    neurons = neuron_tests(pt, boundary, tol)
    stats.bvls_residual = [nt.residual for nt in neurons]
    stats.bvls_scale = [nt.scale for nt in neurons]
    stats.assumption2 = [nt.assumption2 for nt in neurons]
    moving = [nt for nt in neurons if not nt.stationary]
    if moving:
        nt = max(moving, key=lambda n: n.residual / n.scale)
        dZ = np.zeros_like(net.Z)
        dZ[nt.k] = -nt.vt
        test = "neuron gradient" if nt.M == 0 else "Clarke subgradient (BVLS)"
        return descent(Direction.hidden(net, dZ), 1, test, nt.k)
    established.append("Clarke stationary")

    # Step 3: one-sided derivatives along the extreme rays +-vhat_i
    zero_output = zero_output_mask(net, lam, tol.a_zero)
    best = None
    for nt, zo in zip(neurons, zero_output):
        if nt.M == 0 or not nt.assumption2 or zo:
            continue
        norms = np.linalg.norm(nt.rays, axis=0)
        for sign, slopes, flat in ((1.0, nt.slope_plus, nt.flat_plus), (-1.0, nt.slope_minus, nt.flat_minus)):
            rate = np.where(flat, 0.0, slopes / norms)
            j = int(np.argmin(rate))
            if rate[j] < 0 and (best is None or rate[j] < best[0]):
                best = (rate[j], nt.k, sign * nt.rays[:, j])
    stats.L = int(sum(nt.n_flat for nt in neurons))
    stats.K = int(sum(nt.n_both_flat for nt in neurons))
    if best is not None:
        dZ = np.zeros_like(net.Z)
        dZ[best[1]] = best[2]
        return descent(Direction.hidden(net, dZ), 1, "extreme ray", best[1])
    bad = [nt.k for nt, zo in zip(neurons, zero_output) if nt.M and not nt.assumption2 and not zo]
    if bad:
        lap("first_order")
        res.reason = (f"Assumption 2 fails for neuron(s) {bad}: their boundary vectors xbar_i are linearly dependent "
                      f"(rank {[neurons[k].rank for k in bad]} < M_k {[neurons[k].M for k in bad]}), so the extreme "
                      "rays and cone reduction do not apply; no first-order descent was found elsewhere")
        res.message = "not decided: " + res.reason.split(":")[0]
        return res
    established.append("no descent along extreme rays" if stats.M else "differentiable: gradient zero")
    lap("first_order")

    # Step 4: second order on the critical cone
    so = second_order_test(pt, neurons, boundary, tol, bud, np.random.default_rng(seed), *engine, progress=progress)
    stats.solver = so.solver
    stats.qps = so.records
    stats.n_icqp_planned = so.n_icqp_planned
    stats.n_params_reduced = so.n_params_reduced
    stats.hessian_norm, stats.eig_tol = so.hessian_norm, so.eig_tol
    stats.quotient = so.quotient
    if so.inconclusive:
        lap("second_order")
        res.reason = so.inconclusive
        res.message = "first-order stationary; second order not decided (see reason)"
        return res
    if so.outcome == Outcome.NEGATIVE:
        return descent(so.direction, 2, so.source, symmetric=so.source == "ECQP")
    lap("second_order")
    quot = so.quotient
    if quot.zero_output_neurons:
        established.append(f"zero-output neuron(s) {quot.zero_output_neurons}: no descent of order <= 2 (g == 0)")
    if quot.inactive_directions:
        established.append("neuron(s) active on few points: directions orthogonal to those points quotiented "
                           f"(neuron: dims) {quot.inactive_by_name()}")
    if quot.bias_shift_neurons:
        established.append(f"affine neuron(s) {quot.bias_shift_neurons}: bias shift against b2 is exactly "
                           "flat (quotiented)")
    ecqp = next((q for q in so.records if q.kind == "ECQP"), None)
    if ecqp is not None:
        established.append(f"ECQP {ecqp.outcome}")
    n_icqp = sum(q.kind == "ICQP" for q in so.records)
    if n_icqp:
        established.append(f"{n_icqp} ICQP(s) without negative curvature")
    if so.outcome == Outcome.ZERO:
        res.verdict = Verdict.SOSP
        res.message = ("second-order stationary: no descent of order 1 or 2, but some critical direction has zero "
                       "curvature, so a local minimum is not certified")
    else:
        res.verdict = Verdict.LOCAL_MINIMUM
        res.message = ("local minimum: first-order stationary with no descent ray, and the second-order form is "
                       "positive on the critical cone (strict modulo the rescaling symmetry and exactly flat directions)")
    return res
