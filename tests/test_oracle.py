"""`check` against the independent brute-force oracle on random tiny instances exactly on kinks."""

from collections import Counter

import numpy as np
import pytest

from instances import random_kink_instance
from oracle import Instance, oracle_check
from sospcheck import TwoLayerNet, check


def run_pair(inst, solver="auto", weight_decay=0.0):
    o = oracle_check(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["X"], inst["Y"], inst["s_plus"],
                     inst["s_minus"], weight_decay)
    net = TwoLayerNet(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["s_plus"], inst["s_minus"])
    r = check(net, inst["X"], inst["Y"], weight_decay=weight_decay, fragility=False, solver=solver)
    return o, r


def verdict_of(r):
    return r.verdict.value, (r.descent.order if r.descent else None)


def compare(instances, solver="auto", weight_decay=0.0):
    seen, bad = Counter(), []
    for n, inst in enumerate(instances):
        o, r = run_pair(inst, solver, weight_decay)
        seen[(o.verdict, o.order)] += 1
        seen["L>0"] += r.stats.L > 0
        seen["K>0"] += r.stats.K > 0
        if (o.verdict, o.order) != verdict_of(r):
            bad.append((n, (o.verdict, o.order), verdict_of(r), r.reason))
        if r.descent is not None:  # the step lowers the risk, evaluated independently
            d = r.descent
            inst_o = Instance(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["X"], inst["Y"],
                              inst["s_plus"], inst["s_minus"], weight_decay)
            dZ = d.direction.Z * d.step
            v = np.concatenate([dZ.ravel(), d.step * d.direction.W2.ravel()]
                               + ([d.step * d.direction.b2] if inst["b2"] is not None else []))
            assert inst_o.risk(v) < inst_o.risk(), n
    return seen, bad


def batch(seed, n, **kw):
    rng = np.random.default_rng(seed)
    return [random_kink_instance(rng, **kw) for _ in range(n)]


MIXED = batch(0, 120) + batch(1, 60, flat_prob=0.0, both_flat_prob=0.0) + batch(2, 40, s_minus=0.5)


def test_oracle_agrees_on_200_plus_instances_covering_every_verdict():
    seen, bad = compare(MIXED)
    assert not bad, bad[:5]
    for key in [("descent", 1), ("descent", 2), ("sosp", None), ("local_minimum", None)]:
        assert seen[key] >= 3, (key, seen)
    assert seen["L>0"] >= 20 and seen["K>0"] >= 20, seen


def test_oracle_agrees_with_the_matrix_free_solver():
    seen, bad = compare(MIXED[::2], solver="matrix_free")
    assert not bad, bad[:5]


@pytest.mark.parametrize("bias1,bias2", [(False, True), (True, False), (False, False)])
def test_oracle_agrees_without_biases(bias1, bias2):
    seen, bad = compare(batch(10 + bias1 + 2 * bias2, 60, bias1=bias1, bias2=bias2))
    assert not bad, bad[:5]
    assert seen[("descent", 1)] and (seen[("sosp", None)] + seen[("local_minimum", None)] + seen[("descent", 2)])


def test_oracle_agrees_with_weight_decay():
    seen, bad = compare(batch(20, 40), weight_decay=0.5)
    assert not bad, bad[:5]


def test_oracle_itself_on_hand_instances():
    # convex kink: minimum; concave kink (a < 0): first-order descent; zero residual overfit: sosp
    X = np.array([[-1.0], [0.0], [1.0], [2.0]])
    one = dict(W1=[[1.0]], b1=[0.0], W2=[[1.0]], b2=[0.0])
    assert oracle_check(**one, X=X, Y=np.array([1.0, -2.0, 3.0, 1.0])).verdict == "local_minimum"
    o = oracle_check(**one, X=np.array([[0.0], [-1.0]]), Y=np.array([1.0, -1.0]))
    assert (o.verdict, o.order) == ("descent", 1)
    assert oracle_check(**one, X=X[:3], Y=np.array([0.0, 0.0, 1.0])).verdict == "sosp"
