import numpy as np
import pytest

import cases
from sospcheck.geometry import boundary_mask, validity_radius
from sospcheck.losses import get_loss
from sospcheck.model import Direction, TwoLayerNet
from sospcheck.point import evaluate_point
from sospcheck.verify import VerifiedDirections, verify_descent


def point(net, X, Y):
    L = get_loss("squared")
    pt = evaluate_point(net, X, L.prepare(Y, net.dy), L, 1.0, 0.0)
    return pt, boundary_mask(pt.fwd.N, net.Z, pt.fwd.Xbar, 1e-9)


def test_a_non_descent_direction_is_not_verified():
    net, X, Y = cases.convex_kink_minimum()
    pt, B = point(net, X, Y)
    d = Direction.from_blocks(np.array([[0.0, 1.0]]), np.zeros((1, 1)), np.zeros(1))  # raises b1: slope > 0
    v = verify_descent(pt, d, B)
    assert not v.verified and v.slope > 0


def test_ray_direction_is_verified_and_local_model_matches():
    net, X, Y = cases.autograd_fooled()
    pt, B = point(net, X, Y)
    d = Direction.from_blocks(np.array([[0.0, 1.0]]), np.zeros((1, 1)), np.zeros(1))
    v = verify_descent(pt, d, B)
    assert v.verified and v.slope == -1.0
    # R(z + t d) = R + slope t + curvature t^2 exactly for squared loss inside the validity radius
    t = 0.25 * min(v.validity_radius, 1.0)
    exact = pt.risk_at(net.perturbed(d.normalized(), t))
    assert abs(exact - (pt.value + v.slope * t + v.curvature * t * t)) < 1e-12


def test_remembered_line_searches_reuse_a_verified_direction_and_redo_an_unverified_one_under_other_pairs(monkeypatch):
    import sospcheck.verify as verify_module

    net, X, Y = cases.autograd_fooled()
    pt, B = point(net, X, Y)
    calls = []
    monkeypatch.setattr(verify_module, "verify_descent", lambda *a: calls.append(a) or verify_descent(*a))
    search = VerifiedDirections()
    d = Direction.from_blocks(np.array([[0.0, 1.0]]), np.zeros((1, 1)), np.zeros(1))
    first = search(pt, d, B)
    assert first.verified and search(pt, d, B.copy()) is first and len(calls) == 1
    assert search(pt, d, ~B) is first and len(calls) == 1  # a verified decrease holds whatever the pairs
    search(pt, d.scaled(0.5), B)  # a different direction (the caller normalises; here the key differs)
    assert len(calls) == 2
    up = d.scaled(-1.0)  # not a descent: searched again when the boundary pairs differ
    assert not search(pt, up, B).verified and search(pt, up, B) is not None and len(calls) == 3
    search(pt, up, ~B)
    assert len(calls) == 4


def test_validity_radius_only_counts_pairs_moving_towards_their_kink():
    N = np.array([[1.0, -2.0], [0.0, 3.0]])
    B = N == 0
    T = np.array([[1.0, 1.0], [5.0, -1.0]])
    assert validity_radius(N, B, T) == 2.0  # (0,1): -2 + 2*1 = 0; (1,1): 3 - 3 = 0 later
    assert validity_radius(N, B, np.array([[1.0, -1.0], [0.0, 1.0]])) == float("inf")


def test_trial_steps_from_N_plus_tT_match_full_forward_passes():
    from sospcheck import TwoLayerNet
    from sospcheck.loss_change import risk_change_and_noise
    from sospcheck.verify import _change_along

    rng = np.random.default_rng(4)
    X = rng.standard_normal((30, 3))
    for loss, dy, Y, lam, b1, b2 in [("squared", 2, rng.standard_normal((30, 2)), 0.0, True, True),
                                      ("logistic", 1, rng.choice([-1, 1], 30), 0.3, False, True),
                                      ("cross_entropy", 3, rng.integers(0, 3, 30), 0.1, True, False)]:
        net = TwoLayerNet(rng.standard_normal((4, 3)), rng.standard_normal(4) if b1 else None,
                          rng.standard_normal((dy, 4)), rng.standard_normal(dy) if b2 else None, s_minus=0.1)
        L = get_loss(loss)
        pt = evaluate_point(net, X, L.prepare(Y, dy), L, 1.0, lam)
        d = Direction(rng.standard_normal((4, 3)), rng.standard_normal(4) if b1 else None,
                      rng.standard_normal((dy, 4)), rng.standard_normal(dy) if b2 else None)
        along = _change_along(pt, d, pt.fwd.Xbar @ d.Z.T)
        assert along(0.0) == (0.0, 0.0)
        for t in (1e-9, 1e-3, 0.7):
            full = pt.risk_at(net.perturbed(d, t))
            change, noise = along(t)
            # the plain difference of totals agrees to its own rounding; the change from the outputs
            # agrees with the one between the rounded weights fl(z + t d) and z, which differ from the
            # exact move by eps |z| (relative 1e-7 of it at t = 1e-9)
            assert abs(change - (full - pt.value)) <= 1e-12 * abs(full), (loss, t)
            exact, exact_noise = risk_change_and_noise(net, net.perturbed(d, t), X, pt.Y, L, 1.0, lam)
            assert abs(change - exact) <= noise + exact_noise + 1e-14 / t * abs(change), (loss, t)
            assert 0 < noise < 1e-12 * abs(pt.value)  # far below the rounding of R itself


def test_noise_is_the_rounding_bound_of_the_change_not_of_the_risk():
    net, X, Y = cases.autograd_fooled()
    L = get_loss("squared")
    for lam in (0.0, 0.7):
        pt = evaluate_point(net, X, L.prepare(Y, net.dy), L, 1.0, lam)
        B = boundary_mask(pt.fwd.N, net.Z, pt.fwd.Xbar, 1e-9)
        v = verify_descent(pt, Direction.from_blocks(np.array([[0.0, 1.0]]), np.zeros((1, 1)), np.zeros(1)), B)
        assert v.verified and v.loss_before == pt.value and v.loss_after == pt.value - v.decrease
        assert 0 < v.noise <= 1e-13 * v.decrease  # noise ~ eps |change|, not eps R


def _plateau(gap: float):
    """A kink minimum (``cases.convex_kink_minimum``, R = 5) whose output bias is moved by ``gap``:
    for ``gap = 1e-6`` the output-layer gradient (``4 gap`` in ``b2``) is above the check's relative
    tolerance, yet the whole decrease it allows (about ``2 gap^2``) is below the old verification
    margin ``1e-12 R`` (the plain difference of totals: ``eps R ~ 1e-15`` of noise)."""
    net, X, Y = cases.convex_kink_minimum()
    return net.with_weights(b2=net.b2 + gap), X, Y


def test_a_plateau_descent_below_the_rounding_of_the_loss_is_verified_at_the_users_point():
    from sospcheck import Verdict, check

    net, X, Y = _plateau(1e-6)
    r = check(net, X, Y, fragility=False)
    d = r.descent
    assert r.verdict == Verdict.DESCENT and d.order == 1 and d.test == "output-layer gradient", r.reason
    assert -1e-5 < d.slope < 0 < d.curvature
    # the best decrease along d (slope^2 / (4 curvature): the model is exact, no kink moves) is what was
    # verified, below the old margin 1e-12 R under which this point was "inconclusive"
    assert d.decrease == pytest.approx(d.slope**2 / (4 * d.curvature), rel=1e-6)
    assert d.decrease < 1e-12 * r.loss_value
    pt, B = point(net, X, Y)
    v = verify_descent(pt, d.direction, B)
    assert v.verified and v.noise < 1e-6 * v.decrease


def test_a_decrease_inside_the_rounding_of_the_outputs_is_not_verified():
    """Moving ``b2`` back by 1e-15 would lower R by ~1e-30, but the outputs themselves are rounded to
    ~eps |out| ~ 1e-16, which moves the residuals (and the computed change) by more: not verified."""
    net, X, Y = _plateau(1e-15)
    pt, B = point(net, X, Y)  # the output bias off by 1e-15: the gradient is at rounding level
    d = Direction.from_blocks(np.zeros((1, 2)), np.zeros((1, 1)), -np.ones(1))
    v = verify_descent(pt, d, B)
    assert v.slope < 0 and not v.verified and v.noise > abs(v.decrease)


@pytest.mark.parametrize("s_minus, lam", [(0.0, 0.0), (0.1, 0.01)])
def test_row_chunks_change_no_number_of_the_line_search_beyond_rounding(monkeypatch, s_minus, lam):
    """The passes over (m, dh) arrays run a chunk of rows at a time above ``CHUNK_FLOATS``: with one row a
    chunk, every number of the verification, the local model, the validity radius, the boundary sides and
    the confirming risk change is the whole-array one up to rounding (the minima exactly)."""
    import sospcheck.augmented as augmented
    from sospcheck.geometry import boundary_with_sides
    from sospcheck.loss_change import risk_change_and_noise

    rng = np.random.default_rng(5)
    m, dx, dh, dy = 60, 3, 4, 2
    X = rng.integers(-3, 4, (m, dx)).astype(float)
    # integer weights on integer data: many pairs exactly on their kink
    net = TwoLayerNet(rng.integers(-2, 3, (dh, dx)).astype(float), rng.integers(-2, 3, dh).astype(float),
                      rng.standard_normal((dy, dh)), rng.standard_normal(dy), s_minus=s_minus)
    L = get_loss("squared")
    Y = rng.standard_normal((m, dy))
    pt = evaluate_point(net, X, Y, L, 1.0, lam)
    B = boundary_mask(pt.fwd.N, net.Z, pt.fwd.Xbar, 1e-9)
    assert 0 < B.sum() < B.size
    d = Direction.from_vector(net, rng.standard_normal(net.n_params)).normalized()
    if pt.local_terms(d, B)[0] > 0:
        d = d.scaled(-1.0)

    def numbers():
        T = pt.fwd.Xbar @ d.Z.T
        sides = boundary_with_sides(pt.fwd.N, net.Z, pt.fwd.Xbar, 1e-9)
        v = verify_descent(pt, d, B)
        moved = risk_change_and_noise(net, net.perturbed(d, 0.3), X, Y, L, 1.0, lam, fwd=pt.fwd)
        return sides, pt.local_terms(d, B), validity_radius(pt.fwd.N, B, T), v, moved

    sides, terms, radius, v, moved = numbers()
    assert v.verified
    monkeypatch.setattr(augmented, "CHUNK_FLOATS", 1)
    assert len(augmented.row_chunks(m, 4 * dh)) == m
    sides1, terms1, radius1, v1, moved1 = numbers()
    for a, b in zip(sides, sides1):
        np.testing.assert_array_equal(a, b)
    assert radius1 == radius
    np.testing.assert_allclose(terms1, terms, rtol=1e-12)
    np.testing.assert_allclose(moved1, moved, rtol=1e-12)
    assert (v1.verified, v1.step, v1.n_evaluations) == (v.verified, v.step, v.n_evaluations)
    np.testing.assert_allclose([v1.decrease, v1.noise, v1.slope, v1.curvature], [v.decrease, v.noise, v.slope,
                                                                                  v.curvature], rtol=1e-12)
