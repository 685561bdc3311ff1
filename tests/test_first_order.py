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


def test_another_boundary_mask_corrects_the_off_kink_gradients_by_the_pairs_that_changed_side(monkeypatch):
    """The pass ``C = (S * a)' Xbar`` runs once per point; a fragility re-run's mask, differing in a few
    pairs, gets ``C`` corrected by their terms (equal to a fresh pass up to rounding), many changed pairs
    a fresh pass."""
    import sospcheck.first_order as fo
    from sospcheck import TwoLayerNet
    from sospcheck.geometry import boundary_with_sides

    rng = np.random.default_rng(8)
    m, dx, dh = 200, 4, 5
    X = rng.integers(-3, 4, (m, dx)).astype(float)
    net = TwoLayerNet(rng.integers(-2, 3, (dh, dx)).astype(float), rng.integers(-2, 3, dh).astype(float),
                      rng.standard_normal((2, dh)), rng.standard_normal(2), s_minus=0.1)
    L = get_loss("squared")
    pt = Problem(net, X, L.prepare(rng.standard_normal((m, 2)), 2), L, 1.0, 0.0).point()
    B = boundary_with_sides(pt.fwd.N, net.Z, pt.fwd.Xbar, 1e-9)[0]
    assert not B.flags.writeable and 0 < B.sum() < B.size
    passes = []
    real = fo._gradient_pass
    monkeypatch.setattr(fo, "_gradient_pass", lambda p, b: passes.append(1) or real(p, b))
    C0 = fo._off_kink_gradients(pt, B)[0]
    B2 = np.array(B)
    on, off = np.argwhere(B)[:3], np.argwhere(~B)[:4]
    B2[tuple(on.T)], B2[tuple(off.T)] = False, True
    B2.flags.writeable = False
    C2, a_sq, a_max = fo._off_kink_gradients(pt, B2)
    assert len(passes) == 1  # corrected, not recomputed
    C2_pass, a_sq_pass, a_max_pass = real(pt, B2)
    scale = np.abs(C0).max() + 1.0
    np.testing.assert_allclose(C2, C2_pass, rtol=0, atol=1e-13 * scale)
    np.testing.assert_array_equal(a_sq, a_sq_pass)
    np.testing.assert_array_equal(a_max, a_max_pass)
    assert np.abs(C2 - C0).max() > 1e-3 * scale  # the changed pairs do change C
    np.testing.assert_array_equal(fo._off_kink_gradients(pt, B)[0], C0)  # the first mask: its own C
    many = np.array(B)
    many[: m // 4, 0] = ~many[: m // 4, 0]
    fo._off_kink_gradients(pt, many)
    assert len(passes) == 2  # past m / 8 changed pairs: a pass
