"""Risk differences below the rounding of the risk (DESIGN.md section 8.5)."""

import math
from fractions import Fraction

import numpy as np
import pytest

from sospcheck import Direction, TwoLayerNet
from sospcheck.loss_change import activation_change, expm1mx, log1pmx, loss_change, output_change, risk_change
from sospcheck.losses import get_loss, risk
from sospcheck.model import forward

EPS = np.finfo(float).eps


def _dyadic(rng, shape, scale_bits):
    return rng.integers(-2**20, 2**20, size=shape) / 2.0**scale_bits


def test_squared_change_is_exact_on_dyadic_data_where_totals_lose_it():
    rng = np.random.default_rng(0)
    m, dy = 200, 2
    Y = _dyadic(rng, (m, dy), 10)  # |y| ~ 1e3: R ~ 1e8
    out = Y + _dyadic(rng, (m, dy), 12)
    delta = _dyadic(rng, (m, dy), 60)  # |delta| ~ 1e-12
    exact = sum((Fraction(float(o)) - Fraction(float(y))) * Fraction(float(d)) + Fraction(float(d)) ** 2 / 2
                for o, y, d in zip(out.ravel(), Y.ravel(), delta.ravel()))
    loss = get_loss("squared")
    got = loss_change(loss, out, None, Y, 0.5, delta=delta)
    assert got == float(exact / 2)  # every term exact, summed exactly, rounded once
    plain = 0.5 * (np.sum(loss.value(out + delta, Y)) - np.sum(loss.value(out, Y)))
    assert abs(plain - float(exact / 2)) > 1e3 * abs(got - float(exact / 2))


@pytest.mark.parametrize("name,dy", [("logistic", 1), ("cross_entropy", 3)])
def test_tiny_changes_match_the_second_order_expansion(name, dy):
    rng = np.random.default_rng(1)
    m = 300
    loss = get_loss(name)
    Y = loss.prepare(rng.integers(0, 2, m) if name == "logistic" else rng.integers(0, dy, m), dy)
    out = 3.0 * rng.standard_normal((m, dy))
    delta = 1e-7 * rng.standard_normal((m, dy))
    r, H = loss.grad(out, Y), loss.hess(out, Y)
    terms = np.concatenate([(r * delta).ravel(), 0.5 * np.einsum("ic,icd,id->i", delta, H, delta)])
    taylor = math.fsum(terms.tolist())
    bound = 8 * EPS * float(np.sum(np.abs(r * delta))) + m * dy * 1e-21  # rounding of r, third order
    assert abs(loss_change(loss, out, out + delta, Y, delta=delta) - taylor) <= bound


@pytest.mark.parametrize("name,dy", [("squared", 2), ("logistic", 1), ("cross_entropy", 3)])
@pytest.mark.parametrize("size", [0.05, 0.4, 3.0])
def test_moderate_and_large_changes_match_plain_subtraction(name, dy, size):
    # here the change is comparable to the loss, so subtracting the totals is accurate
    rng = np.random.default_rng(2)
    m = 50
    loss = get_loss(name)
    labels = {"squared": rng.standard_normal((m, dy)), "logistic": rng.choice([-1.0, 1.0], m),
              "cross_entropy": rng.integers(0, dy, m)}[name]
    Y = loss.prepare(labels, dy)
    out = 2.0 * rng.standard_normal((m, dy))
    new = out + size * rng.standard_normal((m, dy))
    per_sample = loss.value(new, Y) - loss.value(out, Y)
    plain = math.fsum(per_sample.tolist())
    scale = float(np.sum(np.abs(loss.value(new, Y)) + np.abs(loss.value(out, Y))))
    assert loss_change(loss, out, new, Y, 0.25) == pytest.approx(0.25 * plain, abs=1e-14 * scale)


def test_a_custom_loss_falls_back_to_per_sample_subtraction():
    sq = get_loss("squared")
    custom = get_loss((sq.value, sq.grad, sq.hess))
    rng = np.random.default_rng(3)
    out, Y, new = rng.standard_normal((3, 10, 2))
    assert custom.name == "custom"
    assert loss_change(custom, out, new, Y) == math.fsum((sq.value(new, Y) - sq.value(out, Y)).tolist())


def test_series_helpers_are_accurate_on_both_sides_of_their_switch():
    x = np.array([-0.5, -0.3, -1e-9, 1e-9, 0.3, 0.5, 0.50001, 2.0])
    exact = [math.fsum([v**n / math.factorial(n) for n in range(2, 40)]) for v in x]
    np.testing.assert_allclose(expm1mx(x), exact, rtol=4 * EPS * 8)
    s = np.array([-0.25, -0.1, -1e-9, 1e-9, 0.1, 0.25, 0.2501])
    exact = [math.fsum([(-1) ** (n + 1) * v**n / n for n in range(2, 200)]) for v in s]
    np.testing.assert_allclose(log1pmx(s), exact, rtol=64 * EPS)


def _net(rng, has_b1=True, has_b2=True):
    return TwoLayerNet(rng.standard_normal((4, 3)), rng.standard_normal(4) if has_b1 else None,
                       rng.standard_normal((2, 4)), rng.standard_normal(2) if has_b2 else None, 1.0, 0.1)


@pytest.mark.parametrize("has_b1,has_b2", [(True, True), (False, False)])
def test_output_change_is_accurate_relative_to_a_tiny_move(has_b1, has_b2):
    rng = np.random.default_rng(4)
    net = _net(rng, has_b1, has_b2)
    X = rng.standard_normal((30, 3))
    d = Direction.zeros_like(net)
    d = Direction(1e-11 * rng.standard_normal(net.W1.shape), None if d.b1 is None else 1e-11 * rng.standard_normal(4),
                  1e-11 * rng.standard_normal((2, 4)), None if d.b2 is None else 1e-11 * rng.standard_normal(2))
    new = net.perturbed(d)
    # the move actually made (weights rounded): differences of nearby floats are exact
    dZ, dW2 = new.Z - net.Z, new.W2 - net.W2
    fwd = forward(net, X)
    JT = net.slope(fwd.N) * (fwd.Xbar @ dZ.T)  # no pair changes sign for so small a move
    expected = JT @ new.W2.T + fwd.O @ dW2.T + ((new.b2 - net.b2) if has_b2 else 0.0)
    got = output_change(net, new, X)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13 * np.abs(expected).max())
    plain = forward(new, X).out - fwd.out
    assert np.abs(plain - expected).max() > 100 * np.abs(got - expected).max()


def test_output_change_and_risk_change_across_kinks_and_with_weight_decay():
    rng = np.random.default_rng(5)
    net = _net(rng)
    X = rng.standard_normal((40, 3))
    new = _net(rng)  # far away: many pairs change sign
    fwd, fwd_new = forward(net, X), forward(new, X)
    assert np.any(np.sign(fwd.N) != np.sign(fwd_new.N))
    np.testing.assert_allclose(output_change(net, new, X), fwd_new.out - fwd.out, rtol=1e-13, atol=1e-13)
    loss = get_loss("squared")
    Y = rng.standard_normal((40, 2))
    plain = risk(new, X, Y, loss, 0.1, 0.3) - risk(net, X, Y, loss, 0.1, 0.3)
    assert risk_change(net, new, X, Y, loss, 0.1, 0.3) == pytest.approx(plain, rel=1e-12)


@pytest.mark.parametrize("s_minus", [0.0, 0.01])
@pytest.mark.parametrize("order", ["C", "F"])
def test_activation_change_is_the_slope_times_T_on_one_side_and_the_difference_elsewhere(s_minus, order):
    """The defining select (the same floats, up to the sign of a zero), for steps with many pairs crossing
    the kink, pairs on it before or after, either memory layout (the forward pass returns ``N`` in Fortran
    order)."""
    rng = np.random.default_rng(12)
    net = TwoLayerNet(np.ones((6, 3)), np.zeros(6), np.ones((1, 6)), np.zeros(1), s_minus=s_minus)
    N = np.asarray(rng.standard_normal((400, 6)), order=order)
    N[rng.random(N.shape) < 0.05] = 0.0
    for t in (1e-8, 0.1, 3.0):
        T = np.asarray(t * rng.standard_normal(N.shape), order=order)
        N_new = N + T
        N_new[rng.random(N.shape) < 0.05] = 0.0
        same = ((N > 0) & (N_new > 0)) | ((N < 0) & (N_new < 0))
        want = np.where(same, net.slope(N) * T, net.activation(N_new) - net.activation(N))
        assert t < 1 or not same.all()
        np.testing.assert_array_equal(activation_change(net, N, N_new, T), want)
