"""The certified radius of a strict minimum: no probe inside it finds a lower loss; just outside a
minimum whose basin ends at a nearby kink, probes do (the bound is not vacuous there)."""

import math

import numpy as np
import pytest

import cases
import pieces
from shared_instances import net_of, split_neuron, stratum_point
from sospcheck import TwoLayerNet
from sospcheck.loss_change import risk_change
from sospcheck.model import Direction
from sospcheck.options import Budget, Tolerances
from sospcheck.radius import Radius, certified_radius, third_derivative_bound, uniform_validity_radius
from sospcheck.second_order import Outcome, second_order_test


def radius_of(net, X, Y, loss="squared"):
    """``(Radius, pt)`` through the check's own steps (sum reduction, default tolerances)."""
    tol = Tolerances()
    pt, boundary, out_test, neurons = pieces.first_order(net, X, Y, loss=loss, tol=tol)
    so = second_order_test(pt, neurons, boundary, tol, Budget())
    return certified_radius(pt, boundary, neurons, so, tol), pt


def _direction(net, v):
    """The direction whose ``vector()`` is ``v`` (W1, b1, W2, b2 in order)."""
    parts, off = [], 0
    for a in (net.W1, net.b1, net.W2, net.b2):
        if a is None:
            parts.append(None)
            continue
        parts.append(v[off:off + a.size].reshape(a.shape))
        off += a.size
    return Direction(*parts)


def worst_change(pt, radii, rng, n_dirs=300):
    """Smallest ``R(z + eta) - R(z)`` (accurate below rounding) over random directions of every
    parameter at each length in ``radii``, half of them keeping the kink points' ``W1, b1`` fixed."""
    net = pt.net
    n = net.n_params
    worst = {t: math.inf for t in radii}
    for _ in range(n_dirs):
        v = rng.standard_normal(n)
        if rng.random() < 0.5:
            v[: net.W1.size + (net.dh if net.has_b1 else 0)] *= rng.random() < 0.5
        v /= np.linalg.norm(v)
        for t in radii:
            new = net.perturbed(_direction(net, t * v))
            worst[t] = min(worst[t], risk_change(net, new, pt.X, pt.Y, pt.loss, pt.weight))
    return worst


def kink_basin_minimum(delta=1e-6):
    """A strict minimum (ReLU at x = 0 on its kink, multiplier 1/2) whose basin ends where a point at
    ``x = -delta``, just off the kink and wanting a larger output (residual -10), turns on: raising
    ``b1`` by more than about ``1.1 delta`` lowers the loss. Residuals solve the stationarity equations."""
    X = np.array([[-1.0], [-delta], [0.0], [1.0], [2.0]])
    r = np.array([9.0, -10.0, 2.0, -2.0, 1.0])
    net = TwoLayerNet([[1.0]], [0.0], [[1.0]], [0.0])
    return net, X, np.maximum(X[:, 0], 0.0) - r


MINIMA = [cases.convex_kink_minimum, cases.icqp_one_sided_minimum, cases.always_active_minimum,
          cases.sparsely_active_minimum, lambda: cases.with_dead_neuron(*cases.convex_kink_minimum())]


@pytest.mark.parametrize("make", MINIMA, ids=["convex_kink", "icqp_one_sided", "always_active", "sparsely_active",
                                               "dead_neuron"])
def test_probes_inside_the_radius_find_no_lower_loss(make):
    net, X, Y = make()
    rad, pt = radius_of(net, X, Y)
    assert rad.rigorous and 0 < rad.value <= rad.components["validity_radius"], rad
    worst = worst_change(pt, [rad.value * f for f in (0.01, 0.3, 1.0)], np.random.default_rng(0))
    assert min(worst.values()) >= -rad.components["loss_slack"] - 1e-15 * max(1.0, pt.value), worst


@pytest.mark.parametrize("loss,s_minus,seed", [("logistic", 0.0, 1), ("logistic", 0.5, 48), ("squared", 0.5, 39)])
def test_radius_of_minima_of_other_losses_and_slopes(loss, s_minus, seed):
    inst = stratum_point(seed, loss, dh=2, m=7, s_minus=s_minus)
    rad, pt = radius_of(net_of(inst), inst["X"], inst["Y"], loss)
    assert rad.rigorous and rad.value > 0, rad
    assert rad.components["third_derivative"] == third_derivative_bound(loss) * pt.weight
    worst = worst_change(pt, [rad.value * f for f in (0.01, 0.3, 1.0)], np.random.default_rng(1))
    assert min(worst.values()) >= -rad.components["loss_slack"] - 1e-15 * max(1.0, pt.value), worst


def test_the_radius_is_not_vacuous_next_to_a_kink():
    delta = 1e-6
    net, X, Y = kink_basin_minimum(delta)
    rad, pt = radius_of(net, X, Y)
    assert rad.rigorous and rad.value == pytest.approx(delta, rel=1e-6)  # the kink point at -delta limits it
    rng = np.random.default_rng(2)
    inside = worst_change(pt, [rad.value * f for f in (0.1, 0.5, 1.0)], rng, n_dirs=200)
    assert min(inside.values()) >= 0.0, inside
    outside = worst_change(pt, [rad.value * f for f in (10.0, 100.0)], rng, n_dirs=200)
    assert max(-v for v in outside.values()) > 1e-6 * delta  # a lower loss just outside
    # along b1 exactly: up to delta the loss rises, beyond 1.1 delta it falls
    for t, sign in ((0.9 * delta, 1), (3 * delta, -1)):
        d = Direction(np.zeros((1, 1)), np.array([t]), np.zeros((1, 1)), np.zeros(1))
        assert sign * risk_change(net, net.perturbed(d), pt.X, pt.Y, pt.loss) > 0


def test_duplicates_and_saddles_are_reported_but_not_proven():
    inst = split_neuron(stratum_point(2, "logistic", dh=2, m=7), 0)
    rad, _ = radius_of(net_of(inst), inst["X"], inst["Y"], "logistic")
    assert rad.value > 0 and not rad.rigorous and "duplicate groups" in rad.what_is_proven
    net, X, Y = cases.smooth_saddle_dy2()
    rad, _ = radius_of(net, X, Y)
    assert (rad.value, rad.rigorous) == (0.0, False) and "no strict local minimum" in rad.what_is_proven


def test_record_and_building_blocks():
    rad = Radius(0.5, True, "x", {"a": 1.0, "b": math.inf})
    assert rad.to_dict() == {"value": 0.5, "rigorous": True, "what_is_proven": "x", "components": {"a": 1.0, "b": None}}
    assert rad.contains(0.5) and not rad.contains(0.6)
    assert Radius.interpolation().rigorous and Radius.interpolation().to_dict()["value"] is None
    assert third_derivative_bound("squared") == 0 and third_derivative_bound("custom") is None
    # the logistic loss's third derivative sigma (1 - sigma)(1 - 2 sigma) peaks at 1 / (6 sqrt 3)
    s = np.linspace(0, 1, 100001)
    assert np.max(np.abs(s * (1 - s) * (1 - 2 * s))) == pytest.approx(third_derivative_bound("logistic"), rel=1e-6)
    # cross-entropy: |D^3 lse[d, d, d]| = |E_p (d - E_p d)^3| <= |d|^3 / sqrt 2 on random probes
    rng = np.random.default_rng(0)
    for _ in range(2000):
        o, d = rng.standard_normal(4) * 3, rng.standard_normal(4)
        p = np.exp(o - o.max())
        p /= p.sum()
        c = d - p @ d
        assert abs(p @ c**3) <= third_derivative_bound("cross_entropy") * np.linalg.norm(d) ** 3
    N = np.array([[0.0, 2.0], [-3.0, 1e-3]])
    Xbar = np.array([[1.0, 1.0], [2.0, 0.0]])
    assert uniform_validity_radius(N, N == 0, Xbar) == pytest.approx(1e-3 / 2)
    assert uniform_validity_radius(N, np.ones_like(N, bool), Xbar) == math.inf


def test_certified_radius_only_for_strict_minima():
    net, X, Y = cases.overparameterized_interpolation()  # T2: sosp
    tol = Tolerances()
    pt, boundary, _, neurons = pieces.first_order(net, X, Y, tol=tol)
    so = second_order_test(pt, neurons, boundary, tol, Budget())
    assert so.outcome == Outcome.ZERO
    assert certified_radius(pt, boundary, neurons, so).value == 0.0
