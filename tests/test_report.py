"""The rich report (verdict panel, per-neuron table, second order, tolerances) and the versioned JSON schema."""

import io
import json

import numpy as np
import pytest
from rich.console import Console

import cases
from sospcheck import TwoLayerNet, check
from sospcheck.cli import main
from sospcheck.demo import EXAMPLES
from sospcheck.report import REPORT_SCHEMA, neuron_rows, render
from sospcheck.result import SCHEMA_VERSION


def _text(result, width=100, **kw) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(render(result, **kw))
    return console.export_text()


@pytest.fixture(scope="module")
def demo_results():
    return [(ex, check(ex.net, ex.X, ex.Y)) for ex in EXAMPLES]


def test_each_demo_report_has_panel_tables_and_tolerances(demo_results):
    for ex, r in demo_results:
        text = _text(r)
        assert f"verdict: {r.verdict.value}" in text
        assert r.message.split()[0] in text
        for part in ("per neuron", "decided by", "Clarke |vt_k|", "tolerances, each relative to its scale",
                     "boundary", "budget: max_icqp", "established:", "time:"):
            assert part in text, part
    a, b, c = (_text(r) for ex, r in demo_results)
    assert "descent: order 1 from extreme ray (neuron 0), slope -1" in a and "not needed" in a
    assert "T1 positive" in b and "stationary, rays ascend" in b
    assert "order 2 from ICQP" in c and "T3 negative" in c and "not copositive" in c and "T2 zero" in c


def test_neuron_rows_flat_counts_and_decisions(demo_results):
    (ea, ra), (eb, rb), (ec, rc) = demo_results
    row = neuron_rows(ra)[0]
    assert (row.M, row.flat, row.both_flat, row.decided) == (1, 1, 0, "descent: extreme ray")
    row = neuron_rows(rb)[0]
    assert (row.M, row.flat, row.both_flat, row.decided) == (1, 0, 0, "stationary, rays ascend")
    rows = neuron_rows(rc)
    assert [(r.flat, r.both_flat) for r in rows] == [(1, 1)] * 3
    assert sum(r.flat for r in rows) == rc.stats.L and sum(r.both_flat for r in rows) == rc.stats.K
    assert all(r.decided == "1 flat ray -> 2nd order" for r in rows)
    # the rows are the check's own records, not recomputed
    assert [(r.flat, r.both_flat) for r in rows] == [(n.L, n.K) for n in rc.neurons]


def test_output_layer_descent_leaves_neurons_not_reached():
    rng = np.random.default_rng(0)
    net = TwoLayerNet(rng.standard_normal((30, 2)), rng.standard_normal(30), rng.standard_normal((1, 30)), [0.0])
    X, Y = rng.standard_normal((9, 2)), rng.standard_normal(9)
    r = check(net, X, Y)
    assert r.descent.test == "output-layer gradient"
    rows = neuron_rows(r)
    assert {row.decided for row in rows} == {"not reached"} and rows[0].flat is None
    text = _text(r, max_neurons=5)
    assert "25 more neuron(s) not shown" in text and "second order: not needed" in text


def test_inconclusive_report_says_why(demo_results):
    ex = EXAMPLES[2]
    r = check(ex.net, ex.X, ex.Y, budget={"max_icqp": 1})
    text = _text(r)
    assert "verdict: inconclusive" in text and "reason:" in text and "exceed budget.max_icqp=1" in text


def test_snap_zero_neuron_and_fragility_lines():
    net, X, Y = cases.interpolating_kink_minimum()
    net2 = TwoLayerNet(np.vstack([net.W1, [[0.0]]]), np.append(net.b1, 0.0), np.hstack([net.W2, [[0.0]]]), net.b2)
    r = check(net2, X, Y, snap=True)
    text = _text(r)
    assert "snap:" in text and "zero output (closed form)" in text and "fragility:" in text


# ---------------------------------------------------------------- JSON schema


def _validator():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(REPORT_SCHEMA)
    return jsonschema.Draft202012Validator(REPORT_SCHEMA)


def _variety():
    """Results of every kind: each verdict, snap, weight decay, bias-free, three losses, zero neurons."""
    for ex in EXAMPLES:
        yield check(ex.net, ex.X, ex.Y)
        yield check(ex.net, ex.X, ex.Y, snap=True, weight_decay=0.01, reduction="mean", fragility=False)
    ex = EXAMPLES[2]
    yield check(ex.net, ex.X, ex.Y, budget={"max_icqp": 1})
    rng = np.random.default_rng(4)
    X = rng.standard_normal((8, 2))
    yield check(TwoLayerNet(np.zeros((2, 2)), None, np.zeros((1, 2)), None), X, np.maximum(X[:, 0], 0))
    net = TwoLayerNet(rng.standard_normal((3, 2)), rng.standard_normal(3), rng.standard_normal((1, 3)), [0.0],
                      s_minus=0.1)
    yield check(net, X, rng.integers(0, 2, 8), loss="logistic")
    net3 = TwoLayerNet(rng.standard_normal((3, 2)), rng.standard_normal(3), rng.standard_normal((3, 3)), None)
    yield check(net3, X, rng.integers(0, 3, 8), loss="cross_entropy")
    net, X, Y = cases.interpolating_kink_minimum()
    yield check(TwoLayerNet(np.vstack([net.W1, [[0.0]]]), np.append(net.b1, 0.0),
                            np.hstack([net.W2, [[0.0]]]), net.b2), X, Y)


def test_every_kind_of_report_matches_the_schema():
    validator = _validator()
    verdicts = set()
    for r in _variety():
        report = json.loads(r.to_json())  # strict JSON: no NaN / Infinity
        errors = sorted(validator.iter_errors(report), key=str)
        assert not errors, f"{r.verdict}: {errors[0].message} at {list(errors[0].absolute_path)}"
        verdicts.add(report["verdict"])
    assert verdicts == {"descent", "local_minimum", "sosp", "inconclusive"}


def test_schema_version_is_the_results_and_changes_are_caught(demo_results):
    validator = _validator()
    assert REPORT_SCHEMA["properties"]["schema_version"]["const"] == SCHEMA_VERSION == "2.1"
    report = json.loads(demo_results[2][1].to_json())
    for broken in ({**report, "new_field": 1}, {**report, "schema_version": "1.0"}, {**report, "verdict": "maybe"},
                   {k: v for k, v in report.items() if k != "stats"},
                   {**report, "stats": {**report["stats"], "M": -1}}):
        assert not validator.is_valid(broken)


def test_schema_command_prints_the_schema(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(REPORT_SCHEMA))
