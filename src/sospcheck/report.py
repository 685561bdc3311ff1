"""Reports people and scripts read: the ``rich`` rendering of a :class:`~sospcheck.result.CheckResult`
and the JSON schema of ``CheckResult.to_dict()``.

The rendering is a verdict panel, a per-neuron table (``M_k``, flat rays ``L_k``/``K_k``, the Clarke
residual ``|vt_k|`` and what decided the neuron; for neurons with dependent boundary vectors also the
rank deficiency and the cells and critical faces of the kink arrangement), the second-order
subproblems, and the tolerances.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .result import SCHEMA_VERSION, CheckResult, Decision, NeuronRecord, Reason
from .second_order import Outcome

__all__ = ["NeuronRow", "neuron_rows", "render", "REPORT_SCHEMA", "VERDICT_STYLE"]

VERDICT_STYLE = {"local_minimum": "green", "sosp": "yellow", "descent": "cyan", "inconclusive": "magenta"}
_OUTCOME = {"T1": "T1 positive", "T2": "T2 zero", "T3": "T3 negative"}
_TOLERANCE_SCALE = {
    "boundary": "|Z_k| max|xbar|", "gradient": "natural gradient scale", "a_zero": "|w_k| max|r_i|; |W2|, |out|+|Y|",
    "s_bound": "|s_plus - s_minus|", "eigen": "|H|_2", "rank": "largest singular value",
    "near_zero": "RMS outputs + targets",
}
_DECIDED = {
    Decision.NOT_REACHED: "not reached", Decision.DEAD: "dead (flat, quotiented)",
    Decision.ZERO_OUTPUT: "zero output (closed form)", Decision.NOT_STATIONARY: "not Clarke stationary",
    Decision.ASSUMPTION2: "dependent kinks, not examined", Decision.DIFFERENTIABLE: "differentiable, grad 0",
    Decision.CELLS_STATIONARY: "cells: no descent", Decision.CELLS_ASCEND: "cells ascend off the kinks",
    Decision.STATIONARY: "Clarke stationary", Decision.RAYS_ASCEND: "stationary, rays ascend",
}


@dataclass(frozen=True)
class NeuronRow:
    """One hidden neuron as the table shows it: ``M`` pairs on its kink, of which ``flat`` have a flat ray
    and ``both_flat`` are flat both ways (None when the check did not get that far), ``|vt_k|`` and its
    scale, and what decided it, in words."""

    k: int
    M: int
    flat: int | None
    both_flat: int | None
    residual: float | None
    scale: float | None
    assumption2: bool | None
    decided: str
    rank_deficiency: int | None = None
    n_cells: int | None = None
    n_faces: int | None = None


def _decided(rec: NeuronRecord, result: CheckResult) -> str:
    if rec.decided == Decision.DESCENT:
        return f"descent: {result.descent.test}"
    if rec.decided == Decision.FLAT_RAYS:
        return f"{rec.L} flat ray{'s' if rec.L > 1 else ''} -> 2nd order"
    if rec.decided == Decision.CRITICAL_FACES:
        return f"{rec.n_faces} critical face{'s' if rec.n_faces > 1 else ''} -> 2nd order"
    if rec.decided == Decision.CELL_BUDGET:
        return f"cells over budget ({rec.n_cells} > max_cells {result.budget.max_cells})"
    return _DECIDED[rec.decided]


def neuron_rows(result: CheckResult) -> list[NeuronRow]:
    """One row per hidden neuron, read off the result's :class:`~sospcheck.result.NeuronRecord` s."""
    return [NeuronRow(r.k, r.M, r.L, r.K, r.residual, r.scale, r.assumption2, _decided(r, result),
                      r.rank_deficiency, r.n_cells, r.n_faces) for r in result.neurons]


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
    body.append(f" ({result.reason_code.value})", style="dim")
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
        body.append("\ndescent: ", style="bold")
        body.append(result.descent.description)
    return Panel(body, title="sospcheck", title_align="left", border_style=style, box=box.ROUNDED)


def _neuron_table(rows: list[NeuronRow], max_rows: int) -> Table:
    t = Table(title="per neuron", title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    cells = any(r.n_cells is not None for r in rows)  # a neuron decided by the cells of its kinks (section 9)
    columns = [("k", "right"), ("M_k", "right"), ("L_k flat", "right"), ("K_k both", "right")]
    columns += [("rank def.", "right"), ("cells", "right"), ("faces", "right")] if cells else []
    for name, just in columns + [("Clarke |vt_k|", "right"), ("rel.", "right"), ("decided by", "left")]:
        t.add_column(name, justify=just, no_wrap=name != "decided by")
    shown = rows
    if len(rows) > max_rows:
        notable = ("descent", "not Clarke", "dependent", "zero", "dead")
        keep = [r for r in rows if r.M or r.decided.startswith(notable)][:max_rows]
        rest = [r for r in rows if r not in keep][:max_rows - len(keep)]
        shown = sorted(keep + rest, key=lambda r: r.k)
    for r in shown:
        rel = None if r.residual is None or not r.scale else r.residual / r.scale
        degenerate = [_g(r.rank_deficiency, "d"), _g(r.n_cells, "d"), _g(r.n_faces, "d")] if cells else []
        t.add_row(str(r.k), str(r.M), _g(r.flat, "d"), _g(r.both_flat, "d"), *degenerate, _g(r.residual, ".2g"),
                  _g(rel, ".2g"), r.decided)
    if len(shown) < len(rows):
        t.caption = f"{len(rows) - len(shown)} more neuron(s) not shown (those with kinks first); --json has all"
    return t


def _second_order(result: CheckResult, max_rows: int):
    s = result.stats
    qps = s.qps
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
        style = {Outcome.NEGATIVE: "cyan", Outcome.ZERO: "yellow", Outcome.POSITIVE: "green"}.get(q.outcome, "")
        # an ICQP's detail names its critical faces (degenerate kinks) or how it ended
        signs = " ".join(x for x in (str(list(q.signs)) if q.signs else "", q.detail if q.kind == "ICQP" else "") if x)
        t.add_row(q.kind, signs, str(q.n_vars), f"{q.n_eq}/{q.n_ineq}",
                  _g(q.min_eig), (q.copositivity or "").replace("_", " "),
                  Text(_OUTCOME.get(Outcome(q.outcome).value), style=style))
    t.caption = (f"solver {s.solver or '-'}, {s.n_params_reduced} reduced parameters, ICQPs planned "
                 f"{s.n_icqp_planned}, {s.hessian_products} Hessian-vector products, |H| = {s.hessian_norm:.3g}, "
                 f"eigen tolerance {s.eig_tol:.3g}"
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


def render(result: CheckResult, max_neurons: int = 20, max_qps: int = 12) -> Group:
    """The whole report as one ``rich`` renderable (print it with ``rich.console.Console().print``), drawn
    from the result alone."""
    timing = "time: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in result.timings.items())
    parts = [_verdict_panel(result)]
    if result.neurons:
        parts.append(_neuron_table(neuron_rows(result), max_neurons))
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
    "required": ["m", "p", "M", "L", "K", "output_gradient_norm", "output_gradient_scale", "n_icqp_planned",
                 "n_params_reduced", "hessian_products", "hessian_norm", "eig_tol", "quotient", "near_zero", "solver",
                 "n_qp", "qps"],
    "properties": {
        "m": _INT, "p": _INT, "M": _INT, "L": _INT, "K": _INT,
        "output_gradient_norm": _NUM, "output_gradient_scale": _NUM,
        "n_icqp_planned": _INT, "n_params_reduced": _INT, "hessian_products": _INT, "hessian_norm": _NUM,
        "eig_tol": _NUM,
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
_INT_OR_NULL = {"type": ["integer", "null"], "minimum": 0}
_NEURON = {
    "type": "object", "additionalProperties": False,
    "required": ["k", "M", "L", "K", "rank", "assumption2", "residual", "scale", "decided", "rank_deficiency",
                 "n_cells", "n_faces"],
    "description": "null: the check ended before the step that computes the field (L, K: also for a neuron decided "
                   "by the cells of its kink arrangement; n_cells, n_faces: only for those)",
    "properties": {
        "k": _INT, "M": _INT, "L": _INT_OR_NULL, "K": _INT_OR_NULL, "rank": _INT_OR_NULL,
        "assumption2": {"type": ["boolean", "null"]}, "residual": _NUM, "scale": _NUM,
        "decided": {"enum": [d.value for d in Decision]}, "rank_deficiency": _INT_OR_NULL,
        "n_cells": {**_INT_OR_NULL, "description": "cells of the kink arrangement (the count past the budget for "
                                                   "cell_budget)"},
        "n_faces": {**_INT_OR_NULL, "description": "critical faces with a ray, for the second order"},
    },
}
_MARGIN = {
    "type": "object", "additionalProperties": False, "required": ["decision", "ratio"],
    "properties": {"decision": {"type": "string"},
                   "ratio": {**_NUM, "minimum": 0, "description": "|value| / threshold; null when infinite"}},
}

REPORT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": f"sospcheck-report-{SCHEMA_VERSION}",
    "title": f"sospcheck report, schema version {SCHEMA_VERSION} (CheckResult.to_dict())",
    "description": "Non-finite numbers are written as null. A field added or removed bumps schema_version.",
    "type": "object", "additionalProperties": False,
    "required": ["schema_version", "verdict", "reason_code", "message", "reason", "loss_value", "loss", "reduction",
                 "weight_decay", "descent", "stats", "neurons", "tolerances", "budget", "timings", "established",
                 "margins", "fragile", "fragility", "snap", "activation"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION}, "verdict": _VERDICT,
        "reason_code": {"enum": [r.value for r in Reason]}, "message": {"type": "string"},
        "reason": {"type": ["string", "null"]}, "loss_value": _NUM, "loss": {"type": "string"},
        "reduction": {"enum": ["sum", "mean"]}, "weight_decay": {"type": "number", "minimum": 0},
        "descent": {"oneOf": [{"type": "null"}, _DESCENT]}, "stats": _STATS,
        "neurons": {"type": "array", "items": _NEURON},
        "tolerances": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0},
                       "required": ["boundary", "gradient", "a_zero", "s_bound", "eigen", "rank"]},
        "budget": {"type": "object", "additionalProperties": {"type": "number", "exclusiveMinimum": 0},
                   "required": ["max_icqp", "max_copositive_subsets", "milp_time_limit", "max_dense_params",
                                "max_cells"]},
        "timings": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
        "established": {"type": "array", "items": {"type": "string"}},
        "margins": {"type": "array", "items": _MARGIN}, "fragile": {"type": "boolean"},
        "fragility": {"type": "object", "additionalProperties": _VERDICT},
        "snap": {"oneOf": [{"type": "null"}, {"type": "object", "required": [
            "n_pairs", "per_neuron", "dZ_norm", "dW2_norm", "loss_before", "loss_after", "tol"]}]},
        "activation": {"oneOf": [{"type": "null"}, {
            "type": "object", "additionalProperties": False, "required": ["s_plus", "s_minus"],
            "properties": {"s_plus": {"type": "number", "exclusiveMinimum": 0},
                           "s_minus": {"type": "number", "minimum": 0}}}]},
    },
}
