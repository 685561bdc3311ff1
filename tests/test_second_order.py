"""The second-order solvers: the matrix-free Lanczos path against dense eigendecompositions."""

import numpy as np
import pytest

import cases
import pieces
from sospcheck import TwoLayerNet, check
from sospcheck.krylov import lanczos_min


def test_lanczos_min_converges_to_a_clustered_zero_eigenvalue():
    # ARPACK's relative stopping test cannot be met at lambda_min ~ 0; the residual test here can
    rng = np.random.default_rng(0)
    n = 400
    ev = np.concatenate([np.full(5, 1e-13), rng.uniform(0.5, 2.0, n - 5)])
    Qm, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Qm * ev) @ Qm.T
    kind, theta, y = lanczos_min(lambda x: A @ x, rng.standard_normal(n), 1e-9, max_steps=300)
    assert kind == "converged" and abs(theta) <= 1e-10
    assert np.linalg.norm(A @ y - theta * y) <= 1e-10


def test_lanczos_min_stops_at_the_first_negative_ritz_vector():
    rng = np.random.default_rng(1)
    A = np.diag(np.concatenate([[-1.0], rng.uniform(1, 2, 99)]))
    kind, rq, y = lanczos_min(lambda x: A @ x, rng.standard_normal(100), 1e-9, max_steps=100)
    assert kind == "negative" and rq < -1e-9 and abs(y @ A @ y - rq) < 1e-12


def _planted_stationary(m=1000, dx=40, dh=5, seed=0):
    """A ReLU net without kink points, made exactly stationary by residuals orthogonal to its gradient columns."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, dx))
    net = TwoLayerNet(rng.standard_normal((dh, dx)) / np.sqrt(dx), rng.standard_normal(dh),
                      rng.standard_normal((1, dh)), rng.standard_normal(1))
    N = X @ net.W1.T + net.b1
    O = np.maximum(N, 0.0)
    Xbar = np.hstack([X, np.ones((m, 1))])
    G = np.hstack([np.ones((m, 1)), O] + [((N[:, k] > 0) * net.W2[0, k])[:, None] * Xbar for k in range(dh)])
    e = rng.standard_normal(m)
    r = 0.1 * (e - G @ np.linalg.lstsq(G, e, rcond=None)[0])
    return net, X, (O @ net.W2.T + net.b2 - r[:, None])


@pytest.mark.parametrize("make", [_planted_stationary, cases.always_active_minimum, cases.smooth_saddle_dy2,
                                  cases.icqp_copositivity_saddle, cases.icqp_one_sided_minimum])
def test_matrix_free_and_dense_agree(make):
    net, X, Y = make()
    d = check(net, X, Y, solver="dense", fragility=False)
    f = check(net, X, Y, solver="matrix_free", fragility=False)
    assert d.verdict == f.verdict, (d.summary(), f.summary())
    ed = next((q.min_eig for q in d.stats.qps if q.kind == "ECQP"), None)
    ef = next((q.min_eig for q in f.stats.qps if q.kind == "ECQP"), None)
    if ed is not None and ed > 0:
        assert abs(ed - ef) <= 1e-6 * max(1.0, d.stats.hessian_norm)


def test_flat_directions_of_a_sparsely_active_neuron_are_quotiented():
    # neuron 0 is active on 2 of 60 points: 3 of its 5 weight directions move only negative
    # pre-activations. Without the quotient the ECQP would see them as zero curvature (sosp).
    net, X, Y = cases.sparsely_active_minimum()
    for solver in ("dense", "matrix_free"):
        r = check(net, X, Y, solver=solver, fragility=False)
        assert r.verdict.value == "local_minimum", r.summary()
        assert r.stats.quotient.to_dict()["inactive_directions"] == {"0": 3}
    # with a leaky ReLU the inactive points move the output: nothing is quotiented
    leaky = check(net.with_weights(s_minus=0.01), X, Y, fragility=False)
    assert not (leaky.stats.quotient and leaky.stats.quotient.inactive_directions)


def _planted_dy2(m=2000, dx=40, dh=8, dy=2, scale=0.1, seed=0):
    """A ReLU net with ``dy`` outputs made exactly stationary: ``vec(r)`` projected onto the null space of
    the stationarity equations ``[1 O]' r = 0`` and ``Xbar' (h'(N_k) * (r w_k)) = 0``; ``|r| = scale sqrt(m)``.
    With ``dy = 1`` the cross term vanishes at such points; with ``dy = 2`` a large ``r`` makes a saddle."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, dx))
    net = TwoLayerNet(rng.standard_normal((dh, dx)) / np.sqrt(dx), 0.1 * rng.standard_normal(dh),
                      rng.standard_normal((dy, dh)) / np.sqrt(dh), np.zeros(dy))
    N = X @ net.W1.T + net.b1
    O = np.maximum(N, 0.0)
    Xbar = np.hstack([X, np.ones((m, 1))])
    C0 = np.hstack([np.ones((m, 1)), O])
    A = np.vstack([np.kron(C0.T, np.eye(dy)[d]) for d in range(dy)]
                  + [np.kron(((N[:, k] > 0)[:, None] * Xbar).T, net.W2[:, k]) for k in range(dh)])
    e = rng.standard_normal(m * dy)
    r = e - A.T @ np.linalg.solve(A @ A.T, A @ e)
    r *= scale * np.sqrt(m) / np.linalg.norm(r)
    return net, X, O @ net.W2.T + net.b2 - r.reshape(m, dy)


@pytest.mark.parametrize("scale,verdict", [(0.1, "local_minimum"), (1.0, "descent")])
def test_preconditioned_matrix_free_path_agrees_with_the_dense_certificate(scale, verdict):
    # n = 346 > 300 coordinates: the matrix-free solver asks "Qww > 2 F eig_tol?" with the Kronecker
    # preconditioner instead of running Lanczos to an invariant subspace
    net, X, Y = _planted_dy2(scale=scale)
    d = check(net, X, Y, solver="dense", fragility=False)
    f = check(net, X, Y, solver="matrix_free", fragility=False)
    assert d.verdict.value == f.verdict.value == verdict, (d.summary(), f.summary())
    ed = next(q for q in d.stats.qps if q.kind == "ECQP")
    ef = next(q for q in f.stats.qps if q.kind == "ECQP")
    assert f.stats.n_params_reduced > 300 and "preconditioned" in ef.detail
    if verdict == "local_minimum":
        assert "Cholesky" in ed.detail
        # a Rayleigh quotient: never below lambda_min, and the margin is read from [2 F eig_tol, value]
        assert ed.min_eig - 1e-9 * d.stats.hessian_norm <= ef.min_eig
        assert dict(f.margins)["ECQP: smallest eigenvalue"] == pytest.approx(20.0)
        assert f.stats.hessian_products < 150
    else:
        assert ef.min_eig < -f.stats.eig_tol and ed.min_eig < -d.stats.eig_tol


def test_data_span_from_the_gram_matrix():
    from sospcheck.geometry import data_span, row_space

    rng = np.random.default_rng(4)
    m = 300
    full = np.hstack([rng.standard_normal((m, 6)), np.ones((m, 1))])
    V = data_span(full, 1e-10)
    assert np.array_equal(V, np.eye(7))
    # dependent columns, and singular values at 1e-7 (kept) and 1e-13 (cut) of the largest: the Gram's
    # eigenvalues cannot tell those apart (1e-14, 1e-26 relative); the second look at them can
    U, _ = np.linalg.qr(rng.standard_normal((m, 6)))
    W, _ = np.linalg.qr(rng.standard_normal((9, 6)))
    s = np.array([10.0, 3.0, 1.0, 0.5, 1e-6, 1e-12])
    Xbar = (U * s) @ W.T
    V = data_span(Xbar, 1e-10)
    assert V.shape == (9, 5)
    np.testing.assert_allclose(V.T @ V, np.eye(5), atol=1e-12)
    np.testing.assert_allclose(V @ V.T, W[:, :5] @ W[:, :5].T, atol=1e-9)
    # the complement, as the inactive directions of a neuron use it: orthonormal, orthogonal to V
    V2, C = row_space(Xbar, 1e-10)
    np.testing.assert_allclose(V2 @ V2.T, V @ V.T, atol=1e-12)
    assert C.shape == (9, 4)
    np.testing.assert_allclose(C.T @ C, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(V.T @ C, 0.0, atol=1e-9)
    assert row_space(full, 1e-10)[0] is None and row_space(full, 1e-10)[1].shape == (7, 0)


def test_span_coordinates_share_the_data_when_the_span_is_everything():
    from sospcheck.quotient import bias_shift_rows, span_constant, span_coordinates

    net, X, Y = _planted_stationary(m=300, dx=6, dh=2)
    pt = pieces.first_order(net, X, Y)[0]
    c = span_coordinates(pt, 1e-10)
    assert c.Xr is pt.fwd.Xbar and np.array_equal(c.V, np.eye(7))
    np.testing.assert_allclose(c.gram, pt.fwd.Xbar.T @ pt.fwd.Xbar)
    # a point with a constant feature: the span has one dimension less; the constant function is still
    # in it, and nu_c = V' e (the ones column) is the least-squares solution of Xr nu = 1
    Xc = np.hstack([X, np.full((X.shape[0], 1), 2.0)])
    netc = TwoLayerNet(np.hstack([net.W1, np.zeros((2, 1))]), net.b1 + [50.0, 0.0], net.W2, net.b2)  # 0 always on
    ptc = pieces.first_order(netc, Xc, Y)[0]
    cc = span_coordinates(ptc, 1e-10)
    assert cc.V.shape == (8, 7) and cc.gram is None
    nu_c = np.linalg.lstsq(cc.Xr, np.ones(300), rcond=None)[0]
    nts = pieces.first_order(netc, Xc, Y)[3]
    rows = bias_shift_rows(ptc, span_constant(ptc, cc, 1e-10), nts, set())
    assert list(rows) == [0]
    np.testing.assert_allclose(rows[0][netc.dy:], nu_c, atol=1e-10)


def test_row_space_with_a_cut_above_the_gram_resolution():
    from sospcheck.geometry import row_space

    rng = np.random.default_rng(5)
    U, _ = np.linalg.qr(rng.standard_normal((200, 4)))
    W, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    A = (U * [1.0, 0.5, 0.02, 0.005]) @ W.T
    # every singular value is above 1e-3 of the largest, but a cut at 1e-2 removes the last
    V, C = row_space(A, 1e-2)
    assert V.shape == (4, 3) and C.shape == (4, 1)
    np.testing.assert_allclose(abs(C[:, 0] @ W[:, 3]), 1.0, atol=1e-9)
    assert row_space(A, 1e-10)[0] is None
    # with the Gram given, the matrix itself is asked for only when the Gram cannot decide
    asked = []

    def rows():
        asked.append(1)
        return A

    V2, C2 = row_space(rows, 1e-2, A.T @ A)
    assert asked and V2.shape == (4, 3) and abs(C2[:, 0] @ C[:, 0]) == pytest.approx(1.0, abs=1e-9)
    asked.clear()
    assert row_space(rows, 1e-10, (U[:, :3] @ W[:, :3].T).T @ (U[:, :3] @ W[:, :3].T) + np.eye(4))[0] is None
    assert not asked


def test_constant_direction_keeps_a_good_guess_and_replaces_a_bad_one():
    from sospcheck.quotient import constant_direction

    rng = np.random.default_rng(6)
    Xr = np.hstack([rng.standard_normal((50, 3)), np.ones((50, 1))])
    e = np.array([0.0, 0.0, 0.0, 1.0])
    assert constant_direction(Xr, 1e-10, e) is e
    np.testing.assert_allclose(constant_direction(Xr, 1e-10, np.ones(4)), e, atol=1e-12)
    assert constant_direction(Xr[:, :3], 1e-10, np.ones(3)) is None  # no constant function in the span


def test_the_check_reads_float64_data_without_copying_or_changing_it():
    from sospcheck.validation import validate_features

    X = np.random.default_rng(7).standard_normal((20, 3))
    V = validate_features(X, 3)
    assert np.shares_memory(V, X) and not V.flags.writeable and X.flags.writeable
    assert not np.shares_memory(validate_features(X.astype(np.float32), 3), X)
