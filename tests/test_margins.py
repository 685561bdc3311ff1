"""Decision margins: no ratio in [0.1, 10] means the second order decides the same at 10x and 0.1x tolerances."""

import math

import numpy as np
import pytest

import cases
import pieces
from instances import random_kink_instance
from sospcheck import Tolerances, TwoLayerNet, check
from sospcheck.margins import Margins, any_in_band, margin_ratio
from sospcheck.options import Budget
from sospcheck.second_order import Outcome, second_order_test


def test_margin_ratio_and_one_sided_decisions():
    assert margin_ratio(3.0, 1.0) == 3.0 and margin_ratio(-0.5, 1.0) == 0.5
    assert margin_ratio(0.0, 0.0) == 0.0 and margin_ratio(1.0, 0.0) == math.inf
    assert margin_ratio(20.0, 1.0, accuracy=15.0) == 5.0  # the interval [5, 35] reaches the band at 5
    assert margin_ratio(0.5, 1.0, accuracy=1.0) == 1.0  # an interval across the threshold
    m = Margins()
    assert not m.below("a", 5.0, 1.0)  # positive: never below -t, for any t
    assert m.below("b", -3.0, 1.0) and not m.at_most("c", 2.0, 1.0)
    assert m.abs_le("d", 0.2, 1.0) and m.abs_le("d", 50.0, 100.0) and m.abs_le("d", 1e-5, 1.0)
    assert dict(m.items()) == {"b": 3.0, "c": 2.0, "d": 0.5}  # per name, the ratio nearest 1
    assert list(m.vector_abs_le("v", [1e-6, 3.0, -40.0], 1.0)) == [True, False, False] and m.items()[-1] == ("v", 3.0)
    assert any_in_band([("x", 10.0)]) and not any_in_band([("x", 10.5), ("y", 0.09)])


def _decision(so):
    return (so.outcome, so.inconclusive is None, so.source)


def _first_order_key(first):
    """Every first-order decision the fragility probe's tolerances enter (recorded outside the second order)."""
    _, boundary, ol, neurons = first
    return (boundary.tobytes(), ol.stationary,
            tuple((nt.stationary, nt.flat_plus.tobytes(), nt.flat_minus.tobytes()) for nt in neurons))


def _instances():
    rng = np.random.default_rng(7)
    out = []
    for n in range(60):
        inst = random_kink_instance(rng, s_minus=0.5 if n % 4 == 0 else None)
        net = TwoLayerNet(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["s_plus"], inst["s_minus"])
        out.append((net, inst["X"], inst["Y"], inst["loss"], inst["weight_decay"]))
    for make in (cases.convex_kink_minimum, cases.interpolating_kink_minimum, cases.smooth_saddle_dy2,
                 cases.overparameterized_interpolation, cases.zero_output_saddle, cases.icqp_unbounded_saddle,
                 cases.icqp_copositivity_saddle, cases.icqp_one_sided_minimum, cases.always_active_minimum,
                 cases.sparsely_active_minimum):
        net, X, Y = make()
        out.append((net, X, Y, "squared", 0.0))
    return out


@pytest.mark.parametrize("solver", ["dense", "matrix_free"])
def test_no_margin_in_band_means_the_same_second_order_decision_at_10x_and_01x(solver):
    tol, bud = Tolerances(), Budget()
    robust = flagged = reached = 0
    for net, X, Y, loss, lam in _instances():
        first = pieces.first_order(net, X, Y, loss, lam, tol)
        pt, boundary, ol, neurons = first
        if not ol.stationary or not all(nt.stationary for nt in neurons):
            continue
        reached += 1
        base = second_order_test(pt, neurons, boundary, tol, bud, np.random.default_rng(0), solver)
        if any_in_band(base.margins):
            flagged += 1
            continue
        robust += 1
        for f in (10.0, 0.1):
            so = second_order_test(pt, neurons, boundary, tol.scaled(f), bud, np.random.default_rng(0), solver)
            assert _decision(so) == _decision(base), (f, base.margins, base.records, so.records)
    assert robust >= 15 and reached >= 20, (robust, flagged, reached)


def test_no_margin_in_band_means_the_same_verdict_of_check():
    # check() at scaled tolerances, on instances whose first-order decisions do not move under the
    # scaling (verified directly) and whose second-order margins are all out of the band
    tol, bud = Tolerances(), Budget()
    compared = 0
    for net, X, Y, loss, lam in _instances()[:40]:
        first = pieces.first_order(net, X, Y, loss, lam, tol)
        pt, boundary, ol, neurons = first
        if not ol.stationary or not all(nt.stationary for nt in neurons):
            continue
        if any(_first_order_key(pieces.first_order(net, X, Y, loss, lam, tol.scaled(f))) != _first_order_key(first)
               for f in (10.0, 0.1)):
            continue
        so = second_order_test(pt, neurons, boundary, tol, bud, np.random.default_rng(0))
        if any_in_band(so.margins):
            continue
        base = check(net, X, Y, loss=loss, weight_decay=lam, fragility=False).verdict
        for f in (10.0, 0.1):
            assert check(net, X, Y, loss=loss, weight_decay=lam, tolerances=tol.scaled(f),
                         fragility=False).verdict == base
        compared += 1
    assert compared >= 10, compared


def test_an_eigenvalue_within_the_factor_is_flagged_and_does_flip():
    # a strict minimum whose smallest critical eigenvalue is set at 3x the eigen tolerance: the
    # margin is 3, and at 10x tolerances the same eigenvalue counts as zero (sosp)
    net, X, Y = cases.convex_kink_minimum()
    pt, boundary, _, neurons = pieces.first_order(net, X, Y)
    so = second_order_test(pt, neurons, boundary, Tolerances(), Budget())
    ecqp = next(q for q in so.records if q.kind == "ECQP")
    assert so.outcome == Outcome.POSITIVE and ecqp.min_eig > 0
    tol = Tolerances(eigen=ecqp.min_eig / (3.0 * so.hessian_norm))
    so = second_order_test(pt, neurons, boundary, tol, Budget())
    assert dict(so.margins)["ECQP: smallest eigenvalue"] == pytest.approx(3.0) and any_in_band(so.margins)
    assert check(net, X, Y, tolerances=tol, fragility=False).verdict.value == "local_minimum"
    assert check(net, X, Y, tolerances=tol.scaled(10.0), fragility=False).verdict.value == "sosp"


def test_products_are_counted():
    net, X, Y = cases.icqp_copositivity_saddle()
    pt, boundary, _, neurons = pieces.first_order(net, X, Y)
    dense = second_order_test(pt, neurons, boundary, Tolerances(), Budget(), solver="dense")
    free = second_order_test(pt, neurons, boundary, Tolerances(), Budget(), solver="matrix_free")
    assert dense.outcome == free.outcome == Outcome.NEGATIVE
    # the ICQPs multiply H by their particular solutions; the matrix-free ECQP adds its Lanczos products
    assert 0 < dense.products < free.products
