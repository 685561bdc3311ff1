import numpy as np
import pytest

from instances import random_kink_instance
from oracle import oracle_on
from sospcheck import TwoLayerNet, check
from sospcheck.losses import get_loss, risk
from sospcheck.zero_output import _g, _group_lines, zero_output_test


def test_lines_group_both_orientations_and_sum_unsigned_weights():
    U = np.array([[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8], [1.0, 0.0], [-0.6, -0.8]])
    W = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]])
    lines, R = _group_lines(U, W)
    assert len(lines) == 2
    np.testing.assert_allclose(np.abs(lines[0]), [1.0, 0.0])
    np.testing.assert_allclose(R[0], [7.0])  # relu(-c t) = c (relu(t) - t): the ramp weight is |lambda| r
    np.testing.assert_allclose(R[1], [8.0])


def test_antisymmetric_residuals_on_three_lines_make_g_identically_zero():
    # r_{-x} = -r_x makes each line's ramp cancel, leaving c_l a_l . nu; sum_l c_l a_l = 0 here
    A = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = np.array([1.0, 1.0, -1.0])
    Xr = np.concatenate([A, -A])
    r = np.concatenate([c, -c])[:, None]
    rng = np.random.default_rng(0)
    res = zero_output_test(0, Xr, r, np.zeros(6), np.ones(6, bool), 1.0, 0.0, 1e-12, rng)
    assert res.flat and res.n_lines == 3
    r_bad = r.copy()
    r_bad[5] = 0.5  # breaks the cancellation on the third line
    res = zero_output_test(0, Xr, r_bad, np.zeros(6), np.ones(6, bool), 1.0, 0.0, 1e-12, rng)
    assert not res.flat and np.linalg.norm(res.g_nu) > 0


def test_a_nonzero_ramp_gives_a_probe_with_g_nonzero():
    Xr = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    r = np.array([[1.0], [0.0], [0.0]])
    rng = np.random.default_rng(0)
    res = zero_output_test(0, Xr, r, np.zeros(3), np.ones(3, bool), 1.0, 0.0, 1e-12, rng)
    assert not res.flat and res.nu is not None
    g = _g(res.nu, Xr, r, np.zeros(3), np.ones(3, bool), 1.0, 0.0)
    assert np.linalg.norm(g) > 0.1 * np.linalg.norm(res.nu)


def test_ten_thousand_points_on_the_kink_are_grouped_in_one_pass_each():
    # every point of a zero neuron is on its kink; the grouping used to be a Python double loop
    rng = np.random.default_rng(1)
    Xr = rng.standard_normal((10000, 11))
    r = rng.standard_normal((10000, 1))
    res = zero_output_test(0, Xr, r, np.zeros(10000), np.ones(10000, bool), 1.0, 0.0, 1e-9, rng)
    assert not res.flat and res.n_lines == 10000


# An output layer negligible as a whole (every |w_k| ~ 1e-17 of the targets): its one-sided slopes are
# rounding noise, so both sides of each kink are searched, as for w_k = 0 (issue: a_ik ~ 1e-17 read as sosp).
def _fuzz_instance():
    net = TwoLayerNet(W1=np.array([[2.0]]), b1=np.array([-8.0]), W2=np.array([[2.8652713240225054e-17]]),
                      b2=np.array([-0.6931471805599454]))
    X = np.array([-6, -4, 3, 1, -5, 0, -3, -1, 6, 2, 5, 4.0])[:, None]
    Y = np.array([-1, 1, -1, 1, -1, 1, -1, -1, -1, -1, 1, -1.0])
    return net, X, Y


def test_output_weight_at_rounding_level_is_searched_on_both_kink_sides():
    net, X, Y = _fuzz_instance()
    r = check(net, X, Y, loss="logistic")
    assert r.verdict.value == "descent" and r.descent.order == 2
    d = r.descent
    lossobj = get_loss("logistic")
    Yp = lossobj.prepare(Y, 1)
    before = risk(net, X, Yp, lossobj, 1.0, 0.0)
    for t in (d.step, 1e-2 * d.step, 1e-4 * d.step):  # the curvature term dominates at every step
        assert risk(net.perturbed(d.direction, t), X, Yp, lossobj, 1.0, 0.0) < before


@pytest.mark.parametrize("seed", range(3))
def test_tiny_output_layer_gets_the_verdict_of_the_zero_output_layer(seed):
    rng = np.random.default_rng(100 + seed)
    bad = []
    for n in range(25):
        inst = random_kink_instance(rng, "logistic")
        o = oracle_on(inst)
        eps = 1e-17 * rng.standard_normal(inst["W2"].shape)
        net = TwoLayerNet(inst["W1"], inst["b1"], inst["W2"] + eps, inst["b2"], inst["s_plus"], inst["s_minus"])
        r = check(net, inst["X"], inst["Y"], loss="logistic", fragility=False)
        if (o.verdict, o.order) != (r.verdict.value, r.descent.order if r.descent else None):
            bad.append((n, (o.verdict, o.order), r.verdict.value, r.reason))
    assert not bad, bad
