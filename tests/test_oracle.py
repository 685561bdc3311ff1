"""`check` against the independent brute-force oracle on random tiny instances exactly on kinks."""

from collections import Counter

import numpy as np
import pytest

from instances import random_kink_instance
from oracle import Instance, oracle_check
from sospcheck import TwoLayerNet, check
from sospcheck.model import forward


def run_pair(inst, solver="auto", weight_decay=0.0):
    o = oracle_check(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["X"], inst["Y"], inst["s_plus"],
                     inst["s_minus"], weight_decay)
    net = TwoLayerNet(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["s_plus"], inst["s_minus"])
    r = check(net, inst["X"], inst["Y"], weight_decay=weight_decay, fragility=False, solver=solver)
    return o, r


def verdict_of(r):
    return r.verdict.value, (r.descent.order if r.descent else None)


def shared_quotient_explains(inst, o, r):
    """The check certifies a minimum the oracle leaves at ``sosp`` because of flat directions shared by
    several neurons (which only the check quotients): the oracle, given the check's shared rows, agrees."""
    from shared_instances import oracle_of

    q = r.stats.quotient
    return (o.verdict == "sosp" and r.verdict.value == "local_minimum" and q is not None
            and bool(q.affine_groups or q.pattern_groups or q.duplicate_groups)
            and oracle_of(dict(inst, loss=inst.get("loss", "squared")), quotient=True).verdict == "local_minimum")


def compare(instances, solver="auto", weight_decay=0.0):
    seen, bad = Counter(), []
    for n, inst in enumerate(instances):
        o, r = run_pair(inst, solver, weight_decay)
        seen[(o.verdict, o.order)] += 1
        seen["L>0"] += r.stats.L > 0
        seen["K>0"] += r.stats.K > 0
        if (o.verdict, o.order) != verdict_of(r) and not shared_quotient_explains(inst, o, r):
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


def _affine_neuron_instance(rng, dy, leaky, dead_second):
    """A neuron affine on all data (always active, or always inactive under a leaky ReLU) with
    residuals orthogonal to ``[X 1]``: nearby networks compute affine maps, none fits better, so a
    local minimum, whose bias shift (b1_k one way, b2 the other) is exactly flat."""
    m, dx = 7, 2
    X = rng.integers(-3, 4, size=(m, dx)).astype(float)
    A = np.hstack([X, np.ones((m, 1))])
    sign = -1.0 if leaky else 1.0  # the leaky neuron sits on its negative side
    W1 = sign * rng.uniform(0.5, 1.5, size=(1, dx))
    b1 = np.array([sign * 20.0])
    W2 = rng.uniform(1, 2, size=(dy, 1)) * rng.choice([-1, 1], size=(dy, 1))
    b2 = rng.standard_normal(dy)
    if dead_second:  # dead for ReLU; for the leaky ReLU a second affine neuron
        W1 = np.vstack([W1, [[1.0, 1.0]]])
        b1 = np.append(b1, -100.0)
        W2 = np.hstack([W2, rng.uniform(-1, 1, size=(dy, 1))])
    net = TwoLayerNet(W1, b1, W2, b2, 1.0, 0.5 if leaky else 0.0)
    E = rng.standard_normal((m, dy))
    Y = forward(net, X).out + E - A @ np.linalg.lstsq(A, E, rcond=None)[0]
    return dict(W1=W1, b1=b1, W2=W2, b2=b2, X=X, Y=Y, s_plus=1.0, s_minus=net.s_minus)


@pytest.mark.parametrize("solver", ["dense", "matrix_free"])
def test_affine_neurons_are_certified_minima_by_check_and_oracle(solver):
    rng = np.random.default_rng(5)
    insts = [_affine_neuron_instance(rng, dy, leaky, dead)
             for dy in (1, 2) for leaky in (False, True) for dead in (False, True)]
    for n, inst in enumerate(insts):
        o, r = run_pair(inst, solver)
        # two affine neurons also trade their linear parts off (nu_1 w_1 + nu_2 w_2 fixed): flat
        # directions beyond the bias shifts, which the check quotients (an affine group) and the oracle
        # does not, so it stops at sosp there, finding no descent
        group = inst["s_minus"] > 0 and len(inst["b1"]) == 2
        assert o.verdict == ("sosp" if group else "local_minimum"), (n, o)
        assert r.verdict.value == "local_minimum", (n, r.summary())
        assert r.stats.quotient.affine_groups == ([[0, 1]] if group else [])
        assert r.stats.quotient.bias_shift_neurons == ([0, 1] if len(inst["b1"]) == 2 and inst["s_minus"] else [0])
        perturbed = dict(inst, Y=inst["Y"] + rng.standard_normal(inst["Y"].shape))  # now not stationary
        o, r = run_pair(perturbed, solver)
        assert (o.verdict, o.order) == verdict_of(r) == ("descent", 1)


def test_active_points_that_outnumber_the_dimension_but_do_not_span_it():
    # instance 6: a neuron active on 3 collinear points (plus b1: rank 2 of 3). The flat direction
    # orthogonal to them is quotiented by both the oracle and the check: a certified minimum.
    insts = batch(41, 7, bias1=True, bias2=False)
    seen, bad = compare(insts)
    assert not bad, bad
    o, r = run_pair(insts[6])
    assert o.verdict == r.verdict.value == "local_minimum"
    assert r.stats.quotient.to_dict()["inactive_directions"] == {"0": 1}
