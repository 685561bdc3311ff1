"""The check's result: a verdict and the reason code that says why, its certificate, the numbers
behind it (per-neuron records, margins), and a readable summary."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from .model import Direction, TwoLayerNet
from .options import Budget, Tolerances
from .point import Problem
from .quotient import Quotient
from .second_order import QPRecord
from .snap import SnapInfo

__all__ = ["Verdict", "Reason", "REASON_MESSAGES", "Decision", "NeuronRecord", "DescentCertificate", "Stats",
           "CheckResult", "SCHEMA_VERSION"]

SCHEMA_VERSION = "2.1"


class Verdict(str, Enum):
    """``local_minimum``: strict local minimum modulo the rescaling symmetry and exactly flat directions.
    ``sosp``: second-order stationary, not certified a minimum (a zero-curvature critical direction).
    ``descent``: a direction that lowers the loss, verified. ``inconclusive``: see ``reason``."""

    LOCAL_MINIMUM = "local_minimum"
    SOSP = "sosp"
    DESCENT = "descent"
    INCONCLUSIVE = "inconclusive"

    def __str__(self) -> str:
        return self.value


class Reason(str, Enum):
    """How a check ended, one code per way (DESIGN.md section 3); :data:`REASON_MESSAGES` says each in
    a sentence and :attr:`verdict` is the verdict it gives. ``CheckResult.reason`` adds the details."""

    MINIMUM = "minimum"
    INTERPOLATION = "interpolation"
    SOSP = "sosp"
    OUTPUT_LAYER_DESCENT = "output_layer_descent"
    NEURON_GRADIENT_DESCENT = "neuron_gradient_descent"
    CLARKE_DESCENT = "clarke_descent"
    RAY_DESCENT = "ray_descent"
    CELL_DESCENT = "cell_descent"
    ECQP_DESCENT = "ecqp_descent"
    ICQP_DESCENT = "icqp_descent"
    FACE_DESCENT = "face_descent"
    ZERO_OUTPUT_DESCENT = "zero_output_descent"
    UNVERIFIED_DESCENT = "unverified_descent"
    CELL_BUDGET = "cell_budget"
    ZERO_OUTPUT_UNDECIDED = "zero_output_undecided"
    ICQP_BUDGET = "icqp_budget"
    FACE_BUDGET = "face_budget"
    DEPENDENT_FLAT_RAYS = "dependent_flat_rays"
    EIGENVALUE_FAILED = "eigenvalue_failed"
    SINGULAR_UNRESOLVED = "singular_unresolved"
    COPOSITIVITY_UNDECIDED = "copositivity_undecided"
    SCHUR_INACCURATE = "schur_inaccurate"
    SECOND_ORDER_UNDECIDED = "second_order_undecided"
    TANGENT_GRADIENT_DESCENT = "tangent_gradient_descent"
    CONE_DESCENT = "cone_descent"
    KINK_QUALIFICATION = "kink_qualification"

    @property
    def verdict(self) -> Verdict:
        return _VERDICT_OF.get(self, Verdict.INCONCLUSIVE)

    @property
    def message(self) -> str:
        return REASON_MESSAGES[self]


_VERDICT_OF = {
    Reason.MINIMUM: Verdict.LOCAL_MINIMUM, Reason.INTERPOLATION: Verdict.LOCAL_MINIMUM, Reason.SOSP: Verdict.SOSP,
    **{r: Verdict.DESCENT for r in (Reason.OUTPUT_LAYER_DESCENT, Reason.NEURON_GRADIENT_DESCENT, Reason.CLARKE_DESCENT,
                                    Reason.RAY_DESCENT, Reason.CELL_DESCENT, Reason.ECQP_DESCENT, Reason.ICQP_DESCENT,
                                    Reason.FACE_DESCENT, Reason.ZERO_OUTPUT_DESCENT, Reason.TANGENT_GRADIENT_DESCENT,
                                    Reason.CONE_DESCENT)},
}
_SECOND_ORDER_UNDECIDED = "first-order stationary; second order not decided: "
REASON_MESSAGES: dict[Reason, str] = {
    Reason.MINIMUM: "local minimum: first-order stationary with no descent ray, and the second-order form is "
                    "positive on the critical cone (strict modulo the rescaling symmetry and exactly flat directions)",
    Reason.INTERPOLATION: "global minimum to floating-point precision: every output equals its target up to rounding "
                          "and the loss is nonnegative with minimum 0 there",
    Reason.SOSP: "second-order stationary: no descent of order 1 or 2, but some critical direction has zero "
                 "curvature, so a local minimum is not certified",
    Reason.OUTPUT_LAYER_DESCENT: "order-1 descent along the negative output-layer gradient, verified on the true loss",
    Reason.NEURON_GRADIENT_DESCENT: "order-1 descent along a neuron's negative gradient (no data point on its kink), "
                                    "verified on the true loss",
    Reason.CLARKE_DESCENT: "order-1 descent along a neuron's min-norm Clarke subgradient (BVLS), verified on the "
                           "true loss",
    Reason.RAY_DESCENT: "order-1 descent along an extreme ray of a neuron's sign cones, verified on the true loss",
    Reason.CELL_DESCENT: "order-1 descent inside a cell of the kink arrangement of a neuron whose boundary vectors "
                         "are linearly dependent, verified on the true loss",
    Reason.ECQP_DESCENT: "order-2 descent: negative curvature with every kink held (ECQP), verified on the true loss",
    Reason.ICQP_DESCENT: "order-2 descent into a sign cone of the flat rays (ICQP), verified on the true loss",
    Reason.FACE_DESCENT: "order-2 descent into a critical face of a degenerate neuron's kink arrangement (ICQP), "
                         "verified on the true loss",
    Reason.ZERO_OUTPUT_DESCENT: "order-2 descent through a neuron with zero output weights (closed form), verified "
                                "on the true loss",
    Reason.UNVERIFIED_DESCENT: "a predicted descent direction was not verified on the true loss",
    Reason.CELL_BUDGET: "not decided: the kink arrangement of a neuron with linearly dependent boundary vectors has "
                        "more cells than the budget (Budget.max_cells)",
    Reason.ZERO_OUTPUT_UNDECIDED: _SECOND_ORDER_UNDECIDED + "whether a zero-output neuron's kinks give descent",
    Reason.ICQP_BUDGET: _SECOND_ORDER_UNDECIDED + "the 2^K ICQPs exceed the budget (Budget.max_icqp)",
    Reason.FACE_BUDGET: _SECOND_ORDER_UNDECIDED + "the combinations of critical faces of the degenerate neurons "
                        "exceed the budget (Budget.max_cells)",
    Reason.DEPENDENT_FLAT_RAYS: _SECOND_ORDER_UNDECIDED + "the flat-ray constraints are linearly dependent",
    Reason.EIGENVALUE_FAILED: _SECOND_ORDER_UNDECIDED + "the ECQP's smallest eigenvalue was not computed",
    Reason.SINGULAR_UNRESOLVED: _SECOND_ORDER_UNDECIDED + "a singular ECQP block whose null-space direction "
                                "lacks negative curvature (try solver='dense')",
    Reason.COPOSITIVITY_UNDECIDED: _SECOND_ORDER_UNDECIDED + "a Schur complement's copositivity (budget or solver)",
    Reason.SCHUR_INACCURATE: _SECOND_ORDER_UNDECIDED + "a copositivity witness loses its negative curvature "
                             "once recomputed (inaccurate Schur complement)",
    Reason.SECOND_ORDER_UNDECIDED: _SECOND_ORDER_UNDECIDED + "see the reason",
    Reason.TANGENT_GRADIENT_DESCENT: "order-1 descent along the negative gradient projected onto the tangent space "
                                     "of the kink surfaces (every kink held; deep networks, DESIGN.md 10.5), "
                                     "verified on the true loss",
    Reason.CONE_DESCENT: "order-1 descent inside one sign cone of the kinks (the negative piece gradient projected "
                         "onto its linearised cone; deep networks without the kink qualification, DESIGN.md 10.9), "
                         "verified on the true loss",
    Reason.KINK_QUALIFICATION: "not decided: the kink qualification fails (the gradients of the switching variables "
                               "are linearly dependent, DESIGN.md 10.9): no first-order descent was found, and the "
                               "second-order test needs the qualification",
}


class Decision(str, Enum):
    """What decided one hidden neuron (the report's "decided by" column)."""

    NOT_REACHED = "not_reached"  # the check ended before step 2
    DESCENT = "descent"  # the returned direction moves this neuron
    NOT_STATIONARY = "not_stationary"  # |vt_k| above tolerance (another neuron's descent was steeper)
    ASSUMPTION2 = "assumption2"  # boundary vectors linearly dependent; its cells not examined (the check ended first)
    CELL_BUDGET = "cell_budget"  # dependent boundary vectors, more cells than Budget.max_cells
    CELLS_STATIONARY = "cells_stationary"  # dependent boundary vectors, no first-order descent in any cell
    CELLS_ASCEND = "cells_ascend"  # ... and no critical face beyond its kinks: every cell ascends off them
    CRITICAL_FACES = "critical_faces"  # ... with n_faces critical faces, left to the second order
    DEAD = "dead"  # quotiented: flat in every direction
    ZERO_OUTPUT = "zero_output"  # w_k = 0 and g == 0: decided in closed form
    DIFFERENTIABLE = "differentiable"  # no boundary point, gradient zero
    STATIONARY = "stationary"  # Clarke stationary; the rays were not examined
    RAYS_ASCEND = "rays_ascend"  # every extreme ray ascends
    FLAT_RAYS = "flat_rays"  # L_k flat rays, left to the second order


@dataclass(frozen=True)
class NeuronRecord:
    """Hidden neuron ``k``: ``M`` data points on its kink, of which ``L`` have a flat ray and ``K`` are flat
    both ways; ``rank`` of its boundary vectors (``assumption2``: rank ``M``); the min-norm Clarke subgradient
    ``|vt_k|`` (``residual``) and the scale it is compared with; what decided it. With dependent boundary
    vectors (DESIGN.md section 9): ``n_cells`` of its kink arrangement (the count that exceeded the budget
    when ``decided`` is ``cell_budget``) and ``n_faces``, its critical faces for the second order. None:
    step not reached (or not a degenerate neuron)."""

    k: int
    M: int
    decided: Decision = Decision.NOT_REACHED
    L: int | None = None
    K: int | None = None
    rank: int | None = None
    assumption2: bool | None = None
    residual: float | None = None
    scale: float | None = None
    n_cells: int | None = None
    n_faces: int | None = None

    @property
    def rank_deficiency(self) -> int | None:
        """``M - rank``: how many boundary vectors are linearly dependent on the others (0: Assumption 2)."""
        return None if self.rank is None else self.M - self.rank

    def to_dict(self) -> dict:
        return {"k": self.k, "M": self.M, "L": self.L, "K": self.K, "rank": self.rank,
                "assumption2": self.assumption2, "residual": self.residual, "scale": self.scale,
                "decided": self.decided.value, "rank_deficiency": self.rank_deficiency, "n_cells": self.n_cells,
                "n_faces": self.n_faces}


@dataclass(frozen=True)
class DescentCertificate:
    """A unit-norm direction with ``R(z + step * direction) = loss_after < loss_before``.

    order 1: ``slope < 0`` is the one-sided directional derivative. order 2: ``slope = 0`` on the
    critical cone and ``curvature < 0`` with ``R(z + t d) = R(z) + curvature t^2 + o(t^2)``.
    ``validity_radius``: the local (piecewise-quadratic) model is exact below this step.
    """

    direction: Direction
    order: int
    test: str
    neuron: int | None
    slope: float
    curvature: float
    step: float
    decrease: float
    loss_before: float
    loss_after: float
    validity_radius: float

    @property
    def slope_or_curvature(self) -> float:
        return self.slope if self.order == 1 else self.curvature

    @property
    def description(self) -> str:
        """The descent in one sentence (the summary's and the report's "descent:" line)."""
        what = f"slope {self.slope:.4g}" if self.order == 1 else f"curvature {self.curvature:.4g}"
        return (f"order {self.order} from {self.test}" + (f" (neuron {self.neuron})" if self.neuron is not None else "")
                + f", {what}; verified: R drops by {self.decrease:.4g} at step {self.step:.4g} "
                f"(model exact below {self.validity_radius:.4g})")

    def to_dict(self) -> dict:
        return {
            "order": self.order, "test": self.test, "neuron": self.neuron,
            "slope_or_curvature": self.slope_or_curvature, "slope": self.slope, "curvature": self.curvature,
            "step": self.step, "decrease": self.decrease, "loss_before": self.loss_before,
            "loss_after": self.loss_after, "validity_radius": _finite(self.validity_radius),
            "direction": self.direction.to_dict(),
        }


@dataclass
class Stats:
    """Counts and numbers behind the verdict (names follow DESIGN.md); per neuron in ``neurons``, from
    which ``M``, ``L``, ``K`` and the per-neuron lists are read."""

    m: int = 0
    p: int = 0
    neurons: list[NeuronRecord] = field(default_factory=list)
    output_gradient_norm: float = 0.0
    output_gradient_scale: float = 0.0
    qps: list[QPRecord] = field(default_factory=list)
    n_icqp_planned: int = 0
    n_params_reduced: int = 0
    hessian_products: int = 0
    hessian_norm: float = 0.0
    eig_tol: float = 0.0
    quotient: Quotient | None = None
    near_zero: dict = field(default_factory=dict)
    solver: str = ""

    @property
    def M_k(self) -> list[int]:
        return [n.M for n in self.neurons]

    @property
    def M(self) -> int:
        return sum(self.M_k)

    @property
    def L(self) -> int:
        """Boundary pairs with a flat ray (0 until step 3 ran)."""
        return sum(n.L or 0 for n in self.neurons)

    @property
    def K(self) -> int:
        """Boundary pairs flat both ways (0 until step 3 ran)."""
        return sum(n.K or 0 for n in self.neurons)

    @property
    def bvls_residual(self) -> list[float]:
        """``|vt_k|`` per neuron (empty until step 2 ran)."""
        return [n.residual for n in self.neurons if n.residual is not None]

    @property
    def bvls_scale(self) -> list[float]:
        return [n.scale for n in self.neurons if n.scale is not None]

    @property
    def assumption2(self) -> list[bool]:
        return [n.assumption2 for n in self.neurons if n.assumption2 is not None]

    @property
    def n_qp(self) -> int:
        return len(self.qps)

    def to_dict(self) -> dict:
        """Everything but the per-neuron records (``CheckResult.to_dict()["neurons"]``)."""
        return _jsonable({
            "m": self.m, "p": self.p, "M": self.M, "L": self.L, "K": self.K,
            "output_gradient_norm": self.output_gradient_norm, "output_gradient_scale": self.output_gradient_scale,
            "n_icqp_planned": self.n_icqp_planned, "n_params_reduced": self.n_params_reduced,
            "hessian_products": self.hessian_products, "hessian_norm": self.hessian_norm, "eig_tol": self.eig_tol,
            "quotient": self.quotient.to_dict() if self.quotient is not None else {}, "near_zero": self.near_zero,
            "solver": self.solver, "n_qp": self.n_qp, "qps": [q.to_dict() for q in self.qps],
        })


@dataclass
class CheckResult:
    """What :func:`sospcheck.check` found. ``print(result)`` shows ``summary()``.

    ``reason_code`` says how the check ended; ``verdict`` and ``message`` follow from it and ``reason``
    adds the details of an inconclusive one. ``margins``: per thresholded decision (name, ratio
    ``|value| / threshold`` nearest to 1, :mod:`sospcheck.margins`); ``fragility``: the verdicts with
    every tolerance x10 and x0.1 (re-run only where a margin says a decision could flip), ``fragile``:
    one of them differs.
    """

    reason_code: Reason
    loss_value: float
    descent: DescentCertificate | None
    stats: Stats
    tolerances: Tolerances
    budget: Budget
    timings: dict
    established: list
    reason: str | None = None
    margins: list = field(default_factory=list)
    fragile: bool = False
    fragility: dict = field(default_factory=dict)
    snap: SnapInfo | None = None
    net: TwoLayerNet | None = None
    loss: str = "squared"
    reduction: str = "sum"
    weight_decay: float = 0.0

    @property
    def verdict(self) -> Verdict:
        return self.reason_code.verdict

    @property
    def message(self) -> str:
        return self.reason_code.message

    @property
    def neurons(self) -> list[NeuronRecord]:
        return self.stats.neurons

    @property
    def success(self) -> bool:
        """True when the verdict is conclusive."""
        return self.verdict != Verdict.INCONCLUSIVE

    def marginal(self, factor: float = 10.0) -> list[tuple[str, float]]:
        """The decisions whose margin ratio lies within ``[1/factor, factor]``: those a tolerance change
        by ``factor`` could flip."""
        return [(name, r) for name, r in self.margins if 1.0 / factor <= r <= factor]

    def problem(self, X, Y, loss=None) -> Problem:
        """The risk this result was computed for, from the raw data (``loss`` defaults to ``self.loss``,
        a built-in name; pass the triple for a custom loss): what plots re-evaluate."""
        from .validation import validate_inputs

        if self.net is None:
            raise ValueError("`result.net` is None: the result does not record the point it was computed at")
        return Problem(self.net, *validate_inputs(self.net, X, Y, loss or self.loss, self.reduction,
                                                  self.weight_decay))

    def to_dict(self) -> dict:
        return _jsonable({
            "schema_version": SCHEMA_VERSION,
            "verdict": self.verdict.value,
            "reason_code": self.reason_code.value,
            "message": self.message,
            "reason": self.reason,
            "loss_value": self.loss_value,
            "loss": self.loss,
            "reduction": self.reduction,
            "weight_decay": self.weight_decay,
            "descent": self.descent.to_dict() if self.descent else None,
            "stats": self.stats.to_dict(),
            "neurons": [n.to_dict() for n in self.neurons],
            "tolerances": self.tolerances.to_dict(),
            "budget": self.budget.to_dict(),
            "timings": self.timings,
            "established": self.established,
            "margins": [{"decision": name, "ratio": r} for name, r in self.margins],
            "fragile": self.fragile,
            "fragility": self.fragility,
            "snap": self.snap.to_dict() if self.snap else None,
            "activation": {"s_plus": self.net.s_plus, "s_minus": self.net.s_minus} if self.net else None,
        })

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def note_lines(self) -> list[str]:
        """What was quotiented out, the near-zero probe, the snap and the marginal decisions, one line each
        when present (shared by :meth:`summary` and the rich report)."""
        s, lines = self.stats, []
        if s.quotient is not None and s.quotient.nontrivial:
            lines.append(s.quotient.summary_line())
        if s.near_zero:
            nz = s.near_zero
            lines.append(f"near-zero neurons {nz['neurons']}: zeroing them changes the loss by "
                         f"{nz['loss_change_if_zeroed']:.3g} and gives verdict {nz['verdict_if_zeroed']}")
        if self.snap:
            sn = self.snap
            lines.append(f"snap: {sn.n_pairs} pairs moved onto kinks, |dZ| = {sn.dZ_norm:.3g}, |dW2| = {sn.dW2_norm:.3g}, "
                         f"loss {sn.loss_before:.6g} -> {sn.loss_after:.6g}")
        marginal = self.marginal()
        if marginal:
            lines.append("within 10x of their tolerance (|value| / threshold): "
                         + ", ".join(f"{name} {r:.3g}" for name, r in marginal))
        return lines

    def summary(self) -> str:
        s = self.stats
        lines = [f"verdict: {self.verdict.value} ({self.reason_code.value})"
                 + ("  (FRAGILE: flips under a 10x tolerance change)" if self.fragile else ""),
                 f"  {self.message}"]
        if self.reason:
            lines.append(f"  reason: {self.reason}")
        lines.append(f"loss R(z) = {self.loss_value:.10g}   ({self.loss}, {self.reduction}"
                     + (f", weight decay {self.weight_decay:g})" if self.weight_decay else ")"))
        lines.append(f"data m = {s.m}, parameters p = {s.p}; boundary pairs M = {s.M}, flat rays L = {s.L}, "
                     f"both-flat K = {s.K}")
        if s.neurons:
            lines.append("per neuron: " + ", ".join(
                f"k{n.k}: M={n.M}" + (f" res={n.residual:.2g}" if n.residual is not None else "")
                + (f" rank deficiency {n.rank_deficiency}" if n.rank_deficiency else "")
                + (f" cells={n.n_cells}" if n.n_cells is not None else "")
                + (f" faces={n.n_faces}" if n.n_faces is not None else "")
                + f" ({n.decided.value})" for n in s.neurons))
        if self.descent:
            lines.append("descent: " + self.descent.description)
        for q in s.qps[:8]:
            extra = f", min eig {q.min_eig:.3g}" if q.min_eig is not None else ""
            if q.copositivity:
                extra += f", S {q.copositivity}"
            faces = f" [{q.detail}]" if q.kind == "ICQP" and q.detail else ""
            lines.append(f"  {q.kind}{list(q.signs) if q.signs else ''}{faces}: {q.outcome} ({q.n_vars} vars{extra})")
        if len(s.qps) > 8:
            lines.append(f"  ... {len(s.qps) - 8} more QPs")
        lines += self.note_lines()
        lines.append("established: " + "; ".join(self.established))
        tol = self.tolerances
        lines.append(f"tolerances: boundary {tol.boundary:g}, gradient {tol.gradient:g}, a_zero {tol.a_zero:g}, "
                     f"s_bound {tol.s_bound:g}, eigen {tol.eigen:g} (x|H|={s.hessian_norm:.3g})")
        lines.append("time: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in self.timings.items()))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def _finite(x: float):
    return x if np.isfinite(x) else None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Enum):
        return obj.value
    return obj
