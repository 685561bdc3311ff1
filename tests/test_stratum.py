"""Converging on the stratum (DESIGN.md section 8): planted exact stationary points are recovered from
1e-9 perturbations; far points, stratum exits and bad input are reported, never crashed on."""

import numpy as np
import pytest
from scipy.linalg import null_space

from instances import random_kink_instance
from sospcheck import TwoLayerNet
from sospcheck.losses import get_loss, risk
from sospcheck.stratum import NEARBY_RADIUS, StratumStatus, _evaluate, _project, _Stratum, converge_on_stratum
from sospcheck.stratum_solvers import DenseSolver

EPS = np.finfo(float).eps


def _planted(inst):
    net = TwoLayerNet(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["s_plus"], inst["s_minus"])
    loss = get_loss(inst["loss"])
    Yp = loss.prepare(inst["Y"], net.dy)
    B = (net.augment(inst["X"]) @ net.Z.T) == 0  # integer instances: exact
    return net, loss, Yp, B


def _perturbed(net, X, B, size, rng):
    """``net`` moved by exactly ``size * |z|`` in a random direction in which the held pairs leave
    their kinks on alternating sides (so both sides occur)."""
    z = net.as_direction().vector()
    Xbar = net.augment(X)
    dZ = rng.standard_normal(net.Z.shape)
    for k in range(net.dh):
        idx = np.flatnonzero(B[:, k])
        if idx.size:
            sides = rng.choice([-1.0, 1.0]) * np.where(np.arange(idx.size) % 2 == 0, 1.0, -1.0)
            want = sides * np.linalg.norm(dZ[k]) * np.linalg.norm(Xbar[idx], axis=1)
            dZ[k] += np.linalg.lstsq(Xbar[idx], want - Xbar[idx] @ dZ[k], rcond=None)[0]
    dW2 = rng.standard_normal(net.W2.shape)
    db2 = rng.standard_normal(net.dy) if net.has_b2 else None
    c = size * np.linalg.norm(z) / np.sqrt(np.sum(dZ**2) + np.sum(dW2**2) + (np.sum(db2**2) if net.has_b2 else 0))
    W1 = net.W1 + c * (dZ[:, :-1] if net.has_b1 else dZ)
    b1 = net.b1 + c * dZ[:, -1] if net.has_b1 else None
    return net.with_weights(W1=W1, b1=b1, W2=net.W2 + c * dW2, b2=None if db2 is None else net.b2 + c * db2)


CASES = [(kind, b1, b2) for kind in ("planted", "planted_noflat", "zero_column", "interpolating", "dy2", "leaky",
                                     "logistic", "cross_entropy", "weight_decay") for b1, b2 in ((True, True),)]
CASES += [("planted", False, True), ("planted", True, False), ("leaky", False, False), ("dy2", True, False)]


@pytest.mark.parametrize("kind,bias1,bias2", CASES)
def test_planted_stationary_point_is_recovered_from_a_1e_9_perturbation(kind, bias1, bias2):
    rng = np.random.default_rng([ord(c) for c in kind] + [bias1, bias2])
    signs = set()
    for _ in range(4):
        inst = random_kink_instance(rng, kind, bias1=bias1, bias2=bias2)
        planted, loss, Yp, B = _planted(inst)
        X, lam = inst["X"], inst["weight_decay"]
        start = _perturbed(planted, X, B, 1e-9, rng)
        N = start.augment(X) @ start.Z.T
        signs |= set(np.sign(N[B]).tolist())
        res = converge_on_stratum(start, X, Yp, loss, 1.0, lam, B)
        assert res.status == StratumStatus.CONVERGED and res.success, res.message
        assert res.relative_gradient <= 1e-15
        z0 = planted.as_direction().vector()
        znorm = np.linalg.norm(z0)
        # isolated modulo the rescaling orbits, or not: the step never runs along a flat direction,
        # so z* is no farther from the planted point than the start was
        assert np.linalg.norm(res.net.as_direction().vector() - z0) <= 1e-9 * znorm
        assert 0 < res.distance <= 2e-9 * znorm
        assert res.relative_distance == pytest.approx(res.distance / np.linalg.norm(start.as_direction().vector()))
        # held pairs: on the kink to the rounding of evaluating N_ik itself
        assert res.kink_residual <= 8 * EPS
        assert np.array_equal(res.boundary, B)
        # R(z*) - R(z), below rounding, agrees with the plain difference within its rounding
        plain = risk(res.net, X, Yp, loss, 1.0, lam) - risk(start, X, Yp, loss, 1.0, lam)
        assert abs(res.loss_change - plain) <= 64 * EPS * max(1.0, abs(risk(start, X, Yp, loss, 1.0, lam)))
        assert res.history[0].step == 0 and res.history[-1].loss_change == res.loss_change
        assert res.steps == sum(h.accepted for h in res.history[1:]) >= 1
    assert {-1.0, 1.0} <= signs  # kink points were moved off on both sides


def _min_eig_at_planted(inst):
    """Smallest eigenvalue of the restricted Hessian (orbits removed) and relative gradient at the planted point."""
    planted, loss, Yp, B = _planted(inst)
    Xbar = planted.augment(inst["X"])
    Z0 = _project(planted.Z, Xbar, B)
    bases = [null_space(Xbar[B[:, k]]) if B[:, k].any() else np.eye(Xbar.shape[1]) for k in range(planted.dh)]
    st = _Stratum(planted, Xbar, B, Z0, bases)
    s = _evaluate(st, st.theta0(), inst["X"], Yp, loss, 1.0, inst["weight_decay"])
    return float(DenseSolver(st, s, inst["weight_decay"], 1e-12, 0).l.min()), s.rel


def test_a_saddle_on_the_stratum_is_recovered_too():
    # Newton on g = 0, not a descent method: a stratum saddle attracts it like a minimum
    rng = np.random.default_rng(11)
    for _ in range(50):
        inst = random_kink_instance(rng, "planted_noflat")
        lmin, rel = _min_eig_at_planted(inst)
        if lmin < -1e-3:
            break
    else:
        pytest.fail("no planted stratum saddle in 50 draws")
    assert rel <= 1e-15
    planted, loss, Yp, B = _planted(inst)
    start = _perturbed(planted, inst["X"], B, 1e-9, rng)
    for solver in ("dense", "matrix_free"):
        res = converge_on_stratum(start, inst["X"], Yp, loss, 1.0, 0.0, B, solver=solver)
        assert res.success and res.solver == solver, res.message
        assert res.relative_gradient <= 1e-14
        z0 = planted.as_direction().vector()
        assert np.linalg.norm(res.net.as_direction().vector() - z0) <= 1e-9 * np.linalg.norm(z0)


def test_far_from_any_stationary_point_stops_at_the_radius():
    # every point far on the positive side: a linear model whose least-squares fit is O(1) away
    rng = np.random.default_rng(3)
    X = 1.0 + rng.random((20, 2))
    Y = rng.standard_normal((20, 1))
    net = TwoLayerNet([[1.0, 0.5]], [0.2], [[0.3]], [0.1])
    loss = get_loss("squared")
    B = np.zeros((20, 1), dtype=bool)
    res = converge_on_stratum(net, X, loss.prepare(Y, 1), loss, 1.0, 0.0, B)
    assert res.status == StratumStatus.RADIUS_EXCEEDED and not res.success
    assert "radius" in res.message
    znorm = np.linalg.norm(net.as_direction().vector())
    assert res.radius == pytest.approx(NEARBY_RADIUS * znorm)
    assert res.distance <= res.radius and res.steps == 0 and res.relative_gradient > 1e-3
    wide = converge_on_stratum(net, X, loss.prepare(Y, 1), loss, 1.0, 0.0, B, radius=np.inf)
    assert wide.success  # the same point with no bound: the least-squares fit on this piece


def test_a_stationary_point_across_a_data_point_stops_with_left_stratum():
    # 1-D: the kink sits 1e-7 left of x = 1; the best line on the active points {1, 2, 3} puts its
    # kink at x = 1.11, so converging on this stratum must move the neuron across x = 1
    X = np.array([[-1.0], [0.0], [1.0], [2.0], [3.0]])
    Y = np.maximum(X - 1.5, 0.0)
    net = TwoLayerNet([[0.75]], [-0.75 * (1 - 1e-7)], [[1.0]], None)
    loss = get_loss("squared")
    B = np.zeros((5, 1), dtype=bool)
    res = converge_on_stratum(net, X, loss.prepare(Y, 1), loss, 1.0, 0.0, B, radius=np.inf)
    assert res.status == StratumStatus.LEFT_STRATUM and res.crossing == (2, 0)
    assert "across data point 2" in res.message
    N = net.augment(X) @ res.net.Z.T
    assert N[2, 0] > 0  # the returned point is still on the stratum


def test_a_projection_that_flips_a_sign_stops_before_any_step():
    X = np.array([[0.9995], [1.0], [3.0]])
    net = TwoLayerNet([[1.0]], [-1.0 + 1e-3], [[1.0]], [0.0])  # N = (5e-4, 1e-3, 2)
    loss = get_loss("squared")
    B = np.array([[False], [True], [False]])  # hold x = 1: the kink moves to 1, past x = 0.9995
    res = converge_on_stratum(net, X, loss.prepare(np.zeros(3), 1), loss, 1.0, 0.0, B, radius=np.inf)
    assert res.status == StratumStatus.LEFT_STRATUM and res.crossing == (0, 0) and len(res.history) == 1


def test_a_zero_neuron_stays_put_and_its_exact_kink_pairs_are_held():
    inst = random_kink_instance(np.random.default_rng(5), "planted")
    planted, loss, Yp, B = _planted(inst)
    X = inst["X"]
    Z = np.vstack([planted.Z, np.zeros(planted.Z.shape[1])])  # an extra zero neuron
    W2 = np.hstack([planted.W2, np.zeros((planted.dy, 1))])
    net = TwoLayerNet(Z[:, :-1], Z[:, -1], W2, planted.b2, planted.s_plus, planted.s_minus)
    B2 = np.hstack([B, np.zeros((X.shape[0], 1), bool)])  # the zero neuron's pairs not given
    res = converge_on_stratum(net, X, Yp, loss, 1.0, 0.0, B2)
    assert res.success and res.boundary[:, -1].all()  # exactly on their kinks: added to the mask
    assert not np.any(res.net.Z[-1]) and not np.any(res.net.W2[:, -1])
    assert res.distance <= 1e-12 * np.linalg.norm(net.as_direction().vector())


def test_invalid_input_is_refused_by_name():
    inst = random_kink_instance(np.random.default_rng(1), "planted")
    net, loss, Yp, B = _planted(inst)
    with pytest.raises(ValueError, match="`boundary`"):
        converge_on_stratum(net, inst["X"], Yp, loss, 1.0, 0.0, B[:, :0])
    with pytest.raises(ValueError, match="`solver`"):
        converge_on_stratum(net, inst["X"], Yp, loss, 1.0, 0.0, B, solver="lu")
    with pytest.raises(ValueError, match="`weight_decay`"):
        converge_on_stratum(net, inst["X"], Yp, loss, 1.0, -1.0, B)


def test_result_serialises():
    inst = random_kink_instance(np.random.default_rng(2), "planted")
    net, loss, Yp, B = _planted(inst)
    d = converge_on_stratum(net, inst["X"], Yp, loss, 1.0, 0.0, B).to_dict()
    assert d["status"] == "converged" and d["success"] and d["steps"] == 0 and d["distance"] == 0.0
    assert set(d["history"][0]) >= {"step", "loss", "gradient", "step_norm", "damping"}
