"""Reports people and scripts read: the ``rich`` rendering of a :class:`~sospcheck.result.CheckResult`
and the JSON schema of ``CheckResult.to_dict()``.

The rendering is a verdict panel, a per-neuron table (``M_k``, flat rays ``L_k``/``K_k``, the Clarke
residual ``|vt_k|`` and what decided the neuron), the second-order subproblems, and the tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .check import validate_inputs
from .first_order import neuron_tests
from .geometry import boundary_mask
from .losses import Loss
from .model import TwoLayerNet
from .point import Point, evaluate_point
from .result import SCHEMA_VERSION, CheckResult
from .second_order import QPRecord

__all__ = ["Setting", "NeuronRow", "neuron_rows", "render", "REPORT_SCHEMA", "VERDICT_STYLE"]

VERDICT_STYLE = {"local_minimum": "green", "sosp": "yellow", "descent": "cyan", "inconclusive": "magenta"}
_OUTCOME = {"T1": "T1 positive", "T2": "T2 zero", "T3": "T3 negative"}
_TOLERANCE_SCALE = {
    "boundary": "|Z_k| max|xbar|", "gradient": "natural gradient scale", "a_zero": "|w_k| max|r_i|",
    "s_bound": "|s_plus - s_minus|", "eigen": "|H|_2", "rank": "largest singular value",
    "near_zero": "RMS outputs + targets",
}


@dataclass(frozen=True)
class Setting:
    """The point ``z`` and the data a result was computed for (what tables and plots re-evaluate).

    ``net`` is ``result.net`` (the snapped weights after ``--snap``), ``Y`` is prepared for ``loss``.
    """

    net: TwoLayerNet
    X: np.ndarray
    Y: np.ndarray
    loss: Loss
    weight: float
    weight_decay: float

    @classmethod
    def of(cls, result: CheckResult, X, Y, loss=None) -> "Setting":
        """From a result and the raw data; ``loss`` defaults to ``result.loss`` (a built-in name)."""
        if result.net is None:
            raise ValueError("`result.net` is None: the result does not record the point it was computed at")
        X, Yp, lossobj, weight, lam = validate_inputs(result.net, X, Y, loss or result.loss, result.reduction,
                                                      result.weight_decay)
        return cls(result.net, X, Yp, lossobj, weight, lam)

    def point(self) -> Point:
        """One pass over the data: ``R(z)``, residuals and the local model at ``z``."""
        return evaluate_point(self.net, self.X, self.Y, self.loss, self.weight, self.weight_decay)


@dataclass(frozen=True)
class NeuronRow:
    """One hidden neuron: ``M`` pairs on its kink, of which ``flat`` have a flat ray and ``both_flat``
    are flat both ways (None when the check did not get that far), ``|vt_k|`` and its scale, and what
    decided it."""

    k: int
    M: int
    flat: int | None
    both_flat: int | None
    residual: float | None
    scale: float | None
    assumption2: bool | None
    decided: str


def _flat_counts(result: CheckResult, setting: Setting | None) -> tuple[list | None, list | None]:
    """Per-neuron ``L_k``, ``K_k``: from ``stats`` if it has them, else recomputed (steps 2-3 only)."""
    s = result.stats
    if getattr(s, "L_k", None) is not None and getattr(s, "K_k", None) is not None:
        return list(s.L_k), list(s.K_k)
    if setting is None or "Clarke stationary" not in result.established:
        return None, None
    pt = setting.point()
    boundary = boundary_mask(pt.fwd.N, setting.net.Z, pt.fwd.Xbar, result.tolerances.boundary)
    tests = neuron_tests(pt, boundary, result.tolerances)
    return [nt.n_flat for nt in tests], [nt.n_both_flat for nt in tests]


def neuron_rows(result: CheckResult, setting: Setting | None = None) -> list[NeuronRow]:
    """One row per hidden neuron; ``setting`` lets the flat-ray counts be recomputed when ``stats`` lacks them."""
    s = result.stats
    flat, both = _flat_counts(result, setting)
    quot = s.quotient
    dead, zero = (set(quot.dead_neurons), set(quot.zero_output_neurons)) if quot is not None else (set(), set())
    rows = []
    for k, M in enumerate(s.M_k):
        res = s.bvls_residual[k] if k < len(s.bvls_residual) else None
        scale = s.bvls_scale[k] if k < len(s.bvls_scale) else None
        a2 = s.assumption2[k] if k < len(s.assumption2) else None
        L_k = flat[k] if flat is not None else None
        K_k = both[k] if both is not None else None
        d = result.descent
        if d is not None and d.neuron == k:
            decided = f"descent: {d.test}"
        elif res is None:
            decided = "not reached"
        elif k in dead:
            decided = "dead (flat, quotiented)"
        elif k in zero:
            decided = "zero output (closed form)"
        elif res > result.tolerances.gradient * scale:
            decided = "not Clarke stationary"
        elif M and a2 is False:
            decided = "Assumption 2 fails"
        elif M == 0:
            decided = "differentiable, grad 0"
        elif L_k is None:
            decided = "Clarke stationary"
        elif L_k == 0:
            decided = "stationary, rays ascend"
        else:
            decided = f"{L_k} flat ray{'s' if L_k > 1 else ''} -> 2nd order"
        rows.append(NeuronRow(k, int(M), L_k, K_k, res, scale, a2, decided))
    return rows


def _g(x, spec: str = ".3g") -> str:
    if x is None:
        return "-"
    return format(x, spec)


def _verdict_panel(result: CheckResult) -> Panel:
    v = result.verdict.value
    style = VERDICT_STYLE.get(v, "white")
    body = Text()
    body.append("verdict: ", style="bold")
    body.append(v, style=f"bold {style}")
    if result.fragile:
        body.append("  FRAGILE: flips under a 10x tolerance change", style="bold red")
    body.append("\n" + result.message)
    if result.reason:
        body.append("\nreason: ", style="bold")
        body.append(result.reason)
    s = result.stats
    body.append(f"\nloss R(z) = {result.loss_value:.10g}   ({result.loss}, {result.reduction}"
                + (f", weight decay {result.weight_decay:g})" if result.weight_decay else ")"))
    body.append(f"\ndata m = {s.m}, parameters p = {s.p}")
    body.append(f"\nkinks: M = {s.M} pairs on a kink, L = {s.L} with a flat ray, K = {s.K} flat both ways")
    if result.descent:
        d = result.descent
        what = f"slope {d.slope:.4g}" if d.order == 1 else f"curvature {d.curvature:.4g}"
        body.append("\ndescent: ", style="bold")
        body.append(f"order {d.order} from {d.test}" + (f" (neuron {d.neuron})" if d.neuron is not None else "")
                    + f", {what}; verified: R drops by {d.decrease:.4g} at step {d.step:.4g} "
                    f"(model exact below {d.validity_radius:.4g})")
    return Panel(body, title="sospcheck", title_align="left", border_style=style, box=box.ROUNDED)


def _neuron_table(rows: list[NeuronRow], max_rows: int) -> Table:
    t = Table(title="per neuron", title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name, just in (("k", "right"), ("M_k", "right"), ("L_k flat", "right"), ("K_k both", "right"),
                       ("Clarke |vt_k|", "right"), ("rel.", "right"), ("decided by", "left")):
        t.add_column(name, justify=just, no_wrap=name != "decided by")
    shown = rows
    if len(rows) > max_rows:
        notable = ("descent", "not Clarke", "Assumption", "zero", "dead")
        keep = [r for r in rows if r.M or r.decided.startswith(notable)][:max_rows]
        rest = [r for r in rows if r not in keep][:max_rows - len(keep)]
        shown = sorted(keep + rest, key=lambda r: r.k)
    for r in shown:
        rel = None if r.residual is None or not r.scale else r.residual / r.scale
        t.add_row(str(r.k), str(r.M), _g(r.flat, "d"), _g(r.both_flat, "d"), _g(r.residual, ".2g"),
                  _g(rel, ".2g"), r.decided)
    if len(shown) < len(rows):
        t.caption = f"{len(rows) - len(shown)} more neuron(s) not shown (those with kinks first); --json has all"
    return t


def _second_order(result: CheckResult, max_rows: int):
    s = result.stats
    qps = [q for q in s.qps if isinstance(q, QPRecord)]
    if not qps:
        decided_early = result.descent is not None and result.descent.order == 1
        why = "not needed: a first-order descent was found" if decided_early else "not reached"
        return Text(f"second order: {why}", style="dim")
    t = Table(title="second order on the critical cone", title_justify="left", caption_justify="left",
              box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("QP", "signs", "vars", "eq/ineq", "min eig", "Schur S", "outcome"):
        t.add_column(name, justify="left" if name in ("QP", "signs", "Schur S", "outcome") else "right",
                     no_wrap=name != "signs")
    for q in qps[:max_rows]:
        style = {"T3": "cyan", "T2": "yellow", "T1": "green"}.get(q.outcome, "")
        t.add_row(q.kind, str(list(q.signs)) if q.signs else "", str(q.n_vars), f"{q.n_eq}/{q.n_ineq}",
                  _g(q.min_eig), (q.copositivity or "").replace("_", " "),
                  Text(_OUTCOME.get(q.outcome, q.outcome), style=style))
    t.caption = (f"solver {s.solver or '-'}, {s.n_params_reduced} reduced parameters, ICQPs planned "
                 f"{s.n_icqp_planned}, |H| = {s.hessian_norm:.3g}, eigen tolerance {s.eig_tol:.3g}"
                 + (f"; {len(qps) - max_rows} more QP(s) not shown" if len(qps) > max_rows else ""))
    return t


def _notes(result: CheckResult) -> Text:
    out = Text()
    for line in result.note_lines():
        out.append(line + "\n")
    if result.fragility:
        out.append("fragility: " + ", ".join(f"{k} -> {v}" for k, v in result.fragility.items()) + "\n")
    out.append("established: ", style="bold")
    out.append("; ".join(result.established) or "nothing")
    return out


def _tolerances(result: CheckResult) -> Table:
    t = Table(title="tolerances, each relative to its scale", title_justify="left", box=box.SIMPLE_HEAD,
              pad_edge=False)
    for name, just in (("tolerance", "left"), ("value", "right"), ("relative to", "left")):
        t.add_column(name, justify=just, no_wrap=True)
    for name, value in result.tolerances.to_dict().items():
        scale = _TOLERANCE_SCALE.get(name, "")
        if name == "eigen":
            scale += f" = {result.stats.hessian_norm:.3g}"
        t.add_row(name, f"{value:g}", scale)
    return t


def render(result: CheckResult, setting: Setting | None = None, max_neurons: int = 20, max_qps: int = 12) -> Group:
    """The whole report as one ``rich`` renderable (print it with ``rich.console.Console().print``)."""
    timing = "time: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in result.timings.items())
    parts = [_verdict_panel(result)]
    if result.stats.M_k:
        parts.append(_neuron_table(neuron_rows(result, setting), max_neurons))
    budget = "budget: " + ", ".join(f"{k} {v:g}" for k, v in result.budget.to_dict().items())
    parts += [_second_order(result, max_qps), _notes(result), Text(""), _tolerances(result), Text(budget),
              Text(timing, style="dim")]
    return Group(*parts)


_NUM = {"type": ["number", "null"]}
_INT = {"type": "integer", "minimum": 0}
_QP = {
    "type": "object", "additionalProperties": False,
    "required": ["kind", "outcome", "n_vars", "n_eq", "n_ineq", "signs", "min_eig", "copositivity",
                 "copositivity_value", "detail"],
    "properties": {
        "kind": {"enum": ["ECQP", "ICQP", "zero_output"]}, "outcome": {"enum": ["T1", "T2", "T3"]},
        "n_vars": _INT, "n_eq": _INT, "n_ineq": _INT, "signs": {"type": "array", "items": {"enum": [-1, 1]}},
        "min_eig": _NUM, "copositivity": {"enum": [None, "strictly_copositive", "copositive", "not_copositive",
                                                   "unknown"]},
        "copositivity_value": _NUM, "detail": {"type": "string"},
    },
}
_MATRIX = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
_VECTOR_OR_NULL = {"type": ["array", "null"], "items": {"type": "number"}}
_DESCENT = {
    "type": "object", "additionalProperties": False,
    "required": ["order", "test", "neuron", "slope_or_curvature", "slope", "curvature", "step", "decrease",
                 "loss_before", "loss_after", "validity_radius", "direction"],
    "properties": {
        "order": {"enum": [1, 2]}, "test": {"type": "string"}, "neuron": {"type": ["integer", "null"]},
        "slope_or_curvature": _NUM, "slope": _NUM, "curvature": _NUM, "step": {"type": "number", "minimum": 0},
        "decrease": {"type": "number"}, "loss_before": _NUM, "loss_after": _NUM,
        "validity_radius": {**_NUM, "description": "null when infinite (no kink is crossed along the direction)"},
        "direction": {"type": "object", "additionalProperties": False, "required": ["W1", "b1", "W2", "b2"],
                      "properties": {"W1": _MATRIX, "b1": _VECTOR_OR_NULL, "W2": _MATRIX, "b2": _VECTOR_OR_NULL}},
    },
}
_STATS = {
    "type": "object", "additionalProperties": False,
    "required": ["m", "p", "M", "M_k", "L", "K", "output_gradient_norm", "output_gradient_scale", "bvls_residual",
                 "bvls_scale", "assumption2", "n_icqp_planned", "n_params_reduced", "hessian_norm", "eig_tol",
                 "quotient", "near_zero", "solver", "n_qp", "qps"],
    "properties": {
        "m": _INT, "p": _INT, "M": _INT, "M_k": {"type": "array", "items": _INT}, "L": _INT, "K": _INT,
        "output_gradient_norm": _NUM, "output_gradient_scale": _NUM,
        "bvls_residual": {"type": "array", "items": _NUM}, "bvls_scale": {"type": "array", "items": _NUM},
        "assumption2": {"type": "array", "items": {"type": "boolean"}},
        "n_icqp_planned": _INT, "n_params_reduced": _INT, "hessian_norm": _NUM, "eig_tol": _NUM,
        "quotient": {"type": "object", "properties": {
            "data_span_dim": _INT, "full_dim": _INT, "dead_neurons": {"type": "array", "items": _INT},
            "zero_output_neurons": {"type": "array", "items": _INT},
            "bias_shift_neurons": {"type": "array", "items": _INT},
            "inactive_directions": {"type": "object", "additionalProperties": _INT}}},
        "near_zero": {"type": "object", "properties": {
            "neurons": {"type": "array", "items": _INT}, "loss_change_if_zeroed": _NUM,
            "verdict_if_zeroed": {"enum": ["local_minimum", "sosp", "descent", "inconclusive"]}}},
        "solver": {"type": "string"}, "n_qp": _INT, "qps": {"type": "array", "items": _QP},
    },
}
_VERDICT = {"enum": ["local_minimum", "sosp", "descent", "inconclusive"]}

REPORT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": f"sospcheck-report-{SCHEMA_VERSION}",
    "title": f"sospcheck report, schema version {SCHEMA_VERSION} (CheckResult.to_dict())",
    "description": "Non-finite numbers are written as null. A field added or removed bumps schema_version.",
    "type": "object", "additionalProperties": False,
    "required": ["schema_version", "verdict", "message", "reason", "loss_value", "loss", "reduction", "weight_decay",
                 "descent", "stats", "tolerances", "budget", "timings", "established", "fragile", "fragility", "snap",
                 "activation"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION}, "verdict": _VERDICT, "message": {"type": "string"},
        "reason": {"type": ["string", "null"]}, "loss_value": _NUM, "loss": {"type": "string"},
        "reduction": {"enum": ["sum", "mean"]}, "weight_decay": {"type": "number", "minimum": 0},
        "descent": {"oneOf": [{"type": "null"}, _DESCENT]}, "stats": _STATS,
        "tolerances": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0},
                       "required": ["boundary", "gradient", "a_zero", "s_bound", "eigen", "rank"]},
        "budget": {"type": "object", "additionalProperties": {"type": "number", "exclusiveMinimum": 0},
                   "required": ["max_icqp", "max_copositive_subsets", "milp_time_limit", "max_dense_params"]},
        "timings": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
        "established": {"type": "array", "items": {"type": "string"}}, "fragile": {"type": "boolean"},
        "fragility": {"type": "object", "additionalProperties": _VERDICT},
        "snap": {"oneOf": [{"type": "null"}, {"type": "object", "required": [
            "n_pairs", "per_neuron", "dZ_norm", "dW2_norm", "loss_before", "loss_after", "tol"]}]},
        "activation": {"oneOf": [{"type": "null"}, {
            "type": "object", "additionalProperties": False, "required": ["s_plus", "s_minus"],
            "properties": {"s_plus": {"type": "number", "exclusiveMinimum": 0},
                           "s_minus": {"type": "number", "minimum": 0}}}]},
    },
}
