"""The check's result: a verdict, its certificate, the numbers behind it, and a readable summary."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from .model import Direction, TwoLayerNet
from .options import Budget, Tolerances
from .quotient import Quotient
from .second_order import QPRecord
from .snap import SnapInfo

__all__ = ["Verdict", "DescentCertificate", "Stats", "CheckResult", "SCHEMA_VERSION"]

SCHEMA_VERSION = "1.0"


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
    """Counts and per-neuron numbers behind the verdict (names follow DESIGN.md)."""

    m: int = 0
    p: int = 0
    M: int = 0
    M_k: list = field(default_factory=list)
    L: int = 0
    K: int = 0
    output_gradient_norm: float = 0.0
    output_gradient_scale: float = 0.0
    bvls_residual: list = field(default_factory=list)
    bvls_scale: list = field(default_factory=list)
    assumption2: list = field(default_factory=list)
    qps: list = field(default_factory=list)
    n_icqp_planned: int = 0
    n_params_reduced: int = 0
    hessian_norm: float = 0.0
    eig_tol: float = 0.0
    quotient: Quotient | None = None
    near_zero: dict = field(default_factory=dict)
    solver: str = ""

    @property
    def n_qp(self) -> int:
        return len(self.qps)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "qps"}
        d["quotient"] = self.quotient.to_dict() if self.quotient is not None else {}
        d["n_qp"] = self.n_qp
        d["qps"] = [q.to_dict() if isinstance(q, QPRecord) else q for q in self.qps]
        return _jsonable(d)


@dataclass
class CheckResult:
    """What :func:`sospcheck.check` found. ``print(result)`` shows ``summary()``."""

    verdict: Verdict
    message: str
    loss_value: float
    descent: DescentCertificate | None
    stats: Stats
    tolerances: Tolerances
    budget: Budget
    timings: dict
    established: list
    reason: str | None = None
    fragile: bool = False
    fragility: dict = field(default_factory=dict)
    snap: SnapInfo | None = None
    net: TwoLayerNet | None = None
    loss: str = "squared"
    reduction: str = "sum"
    weight_decay: float = 0.0

    @property
    def success(self) -> bool:
        """True when the verdict is conclusive."""
        return self.verdict != Verdict.INCONCLUSIVE

    def to_dict(self) -> dict:
        return _jsonable({
            "schema_version": SCHEMA_VERSION,
            "verdict": self.verdict.value,
            "message": self.message,
            "reason": self.reason,
            "loss_value": self.loss_value,
            "loss": self.loss,
            "reduction": self.reduction,
            "weight_decay": self.weight_decay,
            "descent": self.descent.to_dict() if self.descent else None,
            "stats": self.stats.to_dict(),
            "tolerances": self.tolerances.to_dict(),
            "budget": self.budget.to_dict(),
            "timings": self.timings,
            "established": self.established,
            "fragile": self.fragile,
            "fragility": self.fragility,
            "snap": self.snap.to_dict() if self.snap else None,
            "activation": {"s_plus": self.net.s_plus, "s_minus": self.net.s_minus} if self.net else None,
        })

    def to_json(self, **kw) -> str:
        return json.dumps(self.to_dict(), **kw)

    def note_lines(self) -> list[str]:
        """What was quotiented out, the near-zero probe and the snap, one line each when present
        (shared by :meth:`summary` and the rich report)."""
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
        return lines

    def summary(self) -> str:
        s = self.stats
        lines = [f"verdict: {self.verdict.value}{'  (FRAGILE: flips under a 10x tolerance change)' if self.fragile else ''}",
                 f"  {self.message}"]
        if self.reason:
            lines.append(f"  reason: {self.reason}")
        lines.append(f"loss R(z) = {self.loss_value:.10g}   ({self.loss}, {self.reduction}"
                     + (f", weight decay {self.weight_decay:g})" if self.weight_decay else ")"))
        lines.append(f"data m = {s.m}, parameters p = {s.p}; boundary pairs M = {s.M}, flat rays L = {s.L}, "
                     f"both-flat K = {s.K}")
        if s.M_k:
            lines.append("per neuron: " + ", ".join(
                f"k{k}: M={mk} res={res:.2g}" for k, (mk, res) in enumerate(zip(s.M_k, s.bvls_residual))))
        if self.descent:
            d = self.descent
            what = f"slope {d.slope:.4g}" if d.order == 1 else f"curvature {d.curvature:.4g}"
            lines.append(f"descent: order {d.order} from {d.test}" + (f" (neuron {d.neuron})" if d.neuron is not None else "")
                         + f", {what}; verified: R drops by {d.decrease:.4g} at step {d.step:.4g} "
                         f"(model exact below {d.validity_radius:.4g})")
        for q in s.qps[:8]:
            q = q if isinstance(q, QPRecord) else None
            if q is None:
                continue
            extra = f", min eig {q.min_eig:.3g}" if q.min_eig is not None else ""
            if q.copositivity:
                extra += f", S {q.copositivity}"
            lines.append(f"  {q.kind}{list(q.signs) if q.signs else ''}: {q.outcome} ({q.n_vars} vars{extra})")
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
