import numpy as np

import cases
from sospcheck import TwoLayerNet, Verdict, check
from sospcheck.losses import get_loss
from sospcheck.snap import refit_output_layer, snap_to_kinks


def test_snap_restores_a_kink_that_training_left_1e_8_away():
    net, X, Y = cases.convex_kink_minimum()
    nudged = net.with_weights(b1=net.b1 + 1e-8, W2=net.W2 + 1e-9)
    raw = check(nudged, X, Y)
    assert raw.stats.M == 0  # not on the kink any more: the exact test sees a smooth point
    r = check(nudged, X, Y, snap=True)
    assert r.verdict == Verdict.LOCAL_MINIMUM and r.stats.M == 1
    assert r.snap.n_pairs == 1 and 0 < r.snap.dZ_norm < 1e-7
    assert abs(r.snap.loss_after - 5.0) < 1e-12 and r.snap.loss_after <= r.snap.loss_before + 1e-12
    assert "snap" in r.timings and "snap:" in r.summary()


def test_snap_moves_several_points_of_one_neuron_by_minimum_norm():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 3))
    Z = np.zeros((1, 4))
    Z[0, :3] = rng.standard_normal(3)
    # make points 0 and 1 lie 1e-7 from the kink
    A = np.hstack([X[:2], np.ones((2, 1))])
    Z[0] += np.linalg.lstsq(A, 1e-7 - A @ Z[0], rcond=None)[0]
    net = TwoLayerNet(Z[:, :3], Z[:, 3], [[1.0]], [0.0])
    L = get_loss("squared")
    Y = L.prepare(rng.standard_normal(6), 1)
    snapped, info = snap_to_kinks(net, X, Y, L, 1.0, 0.0, tol=1e-5)
    N = np.hstack([X, np.ones((6, 1))]) @ snapped.Z[0]
    assert np.all(np.abs(N[:2]) < 1e-14) and info.n_pairs == 2
    assert info.dZ_norm < 1e-6 and info.sign_changes == 0


def test_refit_output_layer_is_stationary_for_each_loss():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((12, 2))
    for loss, dy, Y in [("squared", 2, rng.standard_normal((12, 2))), ("logistic", 1, rng.choice([-1, 1], 12)),
                        ("cross_entropy", 3, rng.integers(0, 3, 12))]:
        net = TwoLayerNet(rng.standard_normal((4, 2)), rng.standard_normal(4), rng.standard_normal((dy, 4)), np.zeros(dy))
        L = get_loss(loss)
        Yp = L.prepare(Y, dy)
        fit, ok = refit_output_layer(net, X, Yp, L, 1.0, 0.05)
        r = check(fit, X, Y, loss=loss, weight_decay=0.05, fragility=False)
        assert ok and r.stats.output_gradient_norm <= 1e-7 * r.stats.output_gradient_scale, loss


def test_snap_never_collapses_a_neuron_when_chance_points_span_every_direction():
    # dx + 1 = 3 points within the snap band span R^3: the minimum-norm fix for all of them is
    # Z_k = 0. The capped snap keeps the two genuine kink points and leaves the chance one.
    rng = np.random.default_rng(3)
    X = rng.standard_normal((40, 2))
    z = np.array([1.0, -0.5, 0.2])
    Xbar = np.hstack([X, np.ones((40, 1))])
    xmax = np.max(np.linalg.norm(Xbar, axis=1))
    targets = np.zeros(40)
    targets[:3] = [1e-11, -2e-11, 4e-6 * np.linalg.norm(z) * xmax]  # two at the kink, one by chance
    for i in range(3):  # move x_i along z's direction so that z . xbar_i = targets[i]
        a = z[:2] / (z[:2] @ z[:2])
        X[i] += (targets[i] - Xbar[i] @ z) * a
    Xbar = np.hstack([X, np.ones((40, 1))])
    N = Xbar @ z
    far = np.abs(N[3:]) <= 1e-5 * np.linalg.norm(z) * xmax
    X[3:][far] += 1.0  # keep the other points out of the band
    net = TwoLayerNet(z[None, :2], z[2:], [[1.0]], [0.0])
    L = get_loss("squared")
    Y = L.prepare(rng.standard_normal(40), 1)
    assert np.linalg.matrix_rank(np.hstack([X[:3], np.ones((3, 1))])) == 3
    snapped, info = snap_to_kinks(net, X, Y, L, 1.0, 0.0, tol=1e-5)
    assert np.linalg.norm(snapped.Z[0]) > 0.99 * np.linalg.norm(z)
    assert info.dZ_norm <= 1e-5 * np.linalg.norm(z)
    assert info.per_neuron == [2] and info.dropped == [1]
    N_new = np.hstack([X, np.ones((40, 1))]) @ snapped.Z[0]
    assert np.all(np.abs(N_new[:2]) < 1e-14) and abs(N_new[2]) > 1e-7
