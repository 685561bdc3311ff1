import numpy as np

import cases
from sospcheck.geometry import boundary_mask, validity_radius
from sospcheck.losses import get_loss
from sospcheck.model import Direction
from sospcheck.point import evaluate_point
from sospcheck.verify import verify_descent


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


def test_validity_radius_only_counts_pairs_moving_towards_their_kink():
    N = np.array([[1.0, -2.0], [0.0, 3.0]])
    B = N == 0
    T = np.array([[1.0, 1.0], [5.0, -1.0]])
    assert validity_radius(N, B, T) == 2.0  # (0,1): -2 + 2*1 = 0; (1,1): 3 - 3 = 0 later
    assert validity_radius(N, B, np.array([[1.0, -1.0], [0.0, 1.0]])) == float("inf")


def test_trial_steps_from_N_plus_tT_match_full_forward_passes():
    from sospcheck import TwoLayerNet
    from sospcheck.verify import _risk_along

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
        along = _risk_along(pt, d, pt.fwd.Xbar @ d.Z.T)
        for t in (0.0, 1e-3, 0.7):
            full = pt.risk_at(net.perturbed(d, t))
            assert abs(along(t) - full) <= 1e-12 * abs(full), (loss, t)


def test_noise_margin_is_relative_to_the_whole_risk():
    net, X, Y = cases.autograd_fooled()
    L = get_loss("squared")
    for lam in (0.0, 0.7):
        pt = evaluate_point(net, X, L.prepare(Y, net.dy), L, 1.0, lam)
        B = boundary_mask(pt.fwd.N, net.Z, pt.fwd.Xbar, 1e-9)
        v = verify_descent(pt, Direction.from_blocks(np.array([[0.0, 1.0]]), np.zeros((1, 1)), np.zeros(1)), B)
        assert v.noise == 1e-12 * abs(pt.value) + 1e-300 and v.loss_before == pt.value
