"""Self-checks of the deep brute-force oracle (tests/deep_oracle.py) and its instance generator
(tests/deep_instances.py), independent of ``sospcheck`` (nothing here imports it).

- One hidden layer is a special case: the deep oracle must agree with the one-layer oracle (tests/oracle.py,
  itself checked on hand-derived cases in test_oracle_selfcheck.py) wherever their quotients coincide.
- Every witness lowers the TRUE risk: order 1 along the straight line, order 2 along the curve that keeps the
  held kinks on their surfaces.
- Verdicts are invariant under a positive rescaling of a hidden unit (a factor 2 keeps the kinks exact).
- Linearly dependent kink gradients are refused, not guessed, unless ``allow_dependent`` and their relations
  hold to second order in every piece (then the same enumeration stays exact; checked like the rest).

``python3 tests/test_deep_oracle_selfcheck.py [N]`` prints the verdict distribution over N generated instances.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from deep_instances import oracle_instance, random_deep_instances, random_dependent_instances  # noqa: E402
from deep_oracle import (DeepInstance, curve_lowers_risk, deep_oracle, dependent_ok, likq_rank,  # noqa: E402
                         relation_residual)
from instances import random_instances  # noqa: E402
from oracle import oracle_on  # noqa: E402


def _one_layer_as_deep(d: dict) -> DeepInstance:
    arr = lambda v: None if v is None else np.asarray(v, float)  # noqa: E731
    return DeepInstance([arr(d["W1"]), arr(d["W2"])], [arr(d["b1"]), arr(d["b2"])], d["X"], d["Y"], d["s_plus"],
                        d["s_minus"], d.get("weight_decay", 0.0), d.get("loss", "squared"))


@pytest.mark.parametrize("kind", ["planted", "planted_noflat", "dy2", "leaky", "random", "weight_decay"])
def test_one_hidden_layer_agrees_with_the_one_layer_oracle(kind):
    """Same verdict and order. The one-layer oracle also quotients the inputs of a zero output column whose kinks
    cannot matter (its rule (c)); those instances are skipped, every other quotient rule is shared."""
    compared = 0
    for d in random_instances(3, 12, kind):
        o1 = oracle_on(d, weight_decay=d.get("weight_decay", 0.0))
        if o1.removed.get("flat_v"):
            continue
        od = deep_oracle(_one_layer_as_deep(d))
        assert (od.verdict, od.order) == (o1.verdict, o1.order), d
        compared += 1
    assert compared >= 6


def test_witnesses_lower_the_true_risk():
    counts = Counter()
    for d in random_deep_instances(40, seed=5):
        inst = oracle_instance(d)
        o = deep_oracle(inst)
        counts[(o.verdict, o.order)] += 1
        if o.verdict != "descent":
            continue
        if o.order == 1:
            R0 = inst.risk()
            assert any(inst.risk(2.0**-e * o.witness) < R0 - 1e-13 * max(1.0, abs(R0)) for e in range(0, 30))
        else:
            assert curve_lowers_risk(inst, o.witness, o.face)
    assert counts[("descent", 1)] and counts[("local_minimum", None)] and counts[("sosp", None)]


def test_rescaling_a_unit_keeps_the_verdict():
    """theta -> (2 row, 2 bias, column / 2) of one hidden unit computes the same function on the same kinks."""
    for d in random_deep_instances(15, seed=7):
        inst = oracle_instance(d)
        o = deep_oracle(inst)
        Ws = [np.array(W) for W in d["weights"]]
        bs = [None if b is None else np.array(b) for b in d["biases"]]
        l = len(Ws) - 2
        Ws[l][0] *= 2.0
        if bs[l] is not None:
            bs[l][0] *= 2.0
        Ws[l + 1][:, 0] /= 2.0
        if d["weight_decay"]:
            continue  # the decay is not invariant
        o2 = deep_oracle(DeepInstance(Ws, bs, d["X"], d["Y"], d["s_plus"], d["s_minus"], 0.0, d["loss"]))
        assert (o2.verdict, o2.order) == (o.verdict, o.order)


def test_dependent_kink_gradients_are_refused():
    """Two points with identical inputs on one kink: identical gradients."""
    inst = DeepInstance([[[1.0]], [[1.0]], [[1.0]]], [[0.0], [-1.0], [0.0]], [[1.0], [1.0], [2.0]],
                        [[0.0], [0.0], [1.0]])
    assert inst.M == 2
    with pytest.raises(ValueError, match="linearly dependent"):
        deep_oracle(inst)


def test_dependent_instances_relations_hold_and_witnesses_lower_the_true_risk():
    """Without the kink qualification (``allow_dependent``): the generated kinks are dependent, their relations hold
    to second order in every piece, and every witness lowers the TRUE risk."""
    counts = Counter()
    for d in random_dependent_instances(40, seed=5):
        inst = oracle_instance(d)
        assert likq_rank(inst) < inst.M and dependent_ok(inst)
        o = deep_oracle(inst, allow_dependent=True)
        counts[(o.verdict, o.order)] += 1
        if o.verdict == "descent" and o.order == 1:
            R0 = inst.risk()
            assert any(inst.risk(2.0**-e * o.witness) < R0 - 1e-13 * max(1.0, abs(R0)) for e in range(0, 30))
        elif o.verdict == "descent":
            assert curve_lowers_risk(inst, o.witness, o.face)
    assert counts[("descent", 1)] and counts[("descent", 2)] and counts[("sosp", None)]


def test_dependent_relation_residual():
    """Collinear layer-1 kinks (linear functions) pass; a relation whose second derivatives disagree fails."""
    Gz = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert relation_residual(Gz, np.zeros((3, 2, 2))) == 0.0
    Hz = np.zeros((3, 2, 2))
    Hz[2] = [[0.0, 1.0], [1.0, 0.0]]
    assert relation_residual(Gz, Hz) > 0.1
    Hz[0] = Hz[2]  # z_3 - z_1 - z_2 now vanishes to second order
    assert relation_residual(Gz, Hz) < 1e-12


def test_generator_puts_points_exactly_on_kinks_with_independent_gradients():
    for d in random_deep_instances(20, seed=9):
        inst = oracle_instance(d)
        assert 1 <= inst.M <= 5
        layers = {l for (_, l, _) in inst.pairs}
        assert layers  # kinks somewhere; over many instances in every layer
        g = inst.piece([1] * inst.M)[2]
        assert np.linalg.matrix_rank(g, tol=1e-9) == inst.M


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    c = Counter()
    for d in random_deep_instances(n, seed=0):
        o = deep_oracle(oracle_instance(d))
        c[(d["kind"], len(d["weights"]) - 1, o.verdict, o.order)] += 1
    for k, v in sorted(c.items(), key=str):
        print(k, v)
