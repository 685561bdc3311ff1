"""Steps 1-3 on their own: the output-layer and neuron tests, their margins, and the steepest extreme ray."""

import numpy as np

import cases
from sospcheck.first_order import neuron_tests, output_layer_test, ratios, record_sides, steepest_ray
from sospcheck.geometry import boundary_mask
from sospcheck.losses import get_loss
from sospcheck.margins import Margins
from sospcheck.options import Tolerances
from sospcheck.point import Problem


def steps_at(net, X, Y, tol=Tolerances()):
    L = get_loss("squared")
    pt = Problem(net, X, L.prepare(Y, net.dy), L, 1.0, 0.0).point()
    boundary = boundary_mask(pt.fwd.N, net.Z, pt.fwd.Xbar, tol.boundary)
    return pt, output_layer_test(pt, tol), neuron_tests(pt, boundary, tol)


def test_ratios_are_value_over_threshold_with_zero_thresholds_never_flipping():
    np.testing.assert_array_equal(ratios([2.0, -3.0, 0.0, 1.0, 0.0], [4.0, 1.0, 5.0, 0.0, 0.0]),
                                  [0.5, 3.0, 0.0, np.inf, 0.0])
    m = Margins()
    record_sides(m, "x", np.array([0.01, 0.5, 3.0, 200.0]))
    assert dict(m.items()) == {"x (within)": 0.5, "x (beyond)": 3.0}
    m = Margins()
    record_sides(m, "y", np.array([40.0, 11.0]))
    record_sides(m, "z", np.zeros(0))
    assert m.items() == [("y (beyond)", 11.0)]


def test_boundary_margins_from_column_extremes_equal_those_of_every_ratio():
    """The nearest boundary decisions from two masked reductions per neuron, as from all m x dh ratios."""
    from sospcheck.check import forward_and_boundary
    from sospcheck.geometry import boundary_threshold

    rng = np.random.default_rng(14)
    net, X, Y = cases.convex_kink_minimum()
    L = get_loss("squared")
    counts = set()
    for tol_b in (1e-9, 1e-2, 0.3, 2.0):
        problem = Problem(net, X + 1e-3 * rng.standard_normal(X.shape), L.prepare(Y, net.dy), L, 1.0, 0.0)
        st = forward_and_boundary(problem, Tolerances(boundary=tol_b))
        N, thr = st.pt.fwd.N, boundary_threshold(net.Z, st.pt.fwd.Xbar, tol_b)
        np.testing.assert_array_equal(st.boundary, boundary_mask(N, net.Z, st.pt.fwd.Xbar, tol_b))
        want = Margins()
        record_sides(want, "boundary |N_ik|", ratios(N, thr[None, :]))
        assert st.margins == want.items()
        counts.add("none" if not st.boundary.any() else "all" if st.boundary.all() else "some")
    assert counts == {"none", "some", "all"}


def test_margins_are_the_decisions_numbers_over_their_thresholds():
    net, X, Y = cases.autograd_fooled()
    tol = Tolerances()
    pt, ol, neurons = steps_at(net, X, Y, tol)
    assert ol.ratio == ol.norm / (tol.gradient * ol.scale) if ol.norm else ol.ratio == 0.0
    (nt,) = neurons
    assert nt.residual_ratio == (nt.residual / (tol.gradient * nt.scale) if nt.residual else 0.0)
    assert nt.flat_ratios.shape == (3, nt.M)
    # a ray is flat exactly when one of its ratios is within its tolerance (away from ties)
    np.testing.assert_array_equal(nt.flat_plus, (nt.flat_ratios[0] <= 1) | (nt.flat_ratios[1] <= 1))
    np.testing.assert_array_equal(nt.flat_minus, (nt.flat_ratios[0] <= 1) | (nt.flat_ratios[2] <= 1))


def test_steepest_ray_is_the_most_negative_slope_per_unit_length():
    net, X, Y = cases.autograd_fooled()
    pt, ol, neurons = steps_at(net, X, Y)
    assert ol.stationary and all(nt.stationary for nt in neurons)
    ray = steepest_ray(neurons)
    assert ray is not None and ray.k == 0 and ray.rate < 0
    nt = neurons[0]
    rates = [s / np.linalg.norm(nt.rays, axis=0) for s in (nt.slope_plus, nt.slope_minus)]
    assert ray.rate == min(float(np.min(np.where(f, 0.0, r))) for r, f in zip(rates, (nt.flat_plus, nt.flat_minus)))
    assert ray.direction[-1] > 0  # switching the neuron on for x = 0 (the bias grows)
    assert steepest_ray(neurons, skip=np.array([True])) is None  # a skipped (zero-output) neuron has no ray


def test_no_ray_descends_at_a_minimum():
    net, X, Y = cases.convex_kink_minimum()
    _, _, neurons = steps_at(net, X, Y)
    assert neurons[0].M == 1 and steepest_ray(neurons) is None
