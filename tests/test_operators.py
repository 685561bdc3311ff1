"""The Hessian operator against finite differences of the true risk, away from kinks."""

import numpy as np
import pytest

from sospcheck import TwoLayerNet
from sospcheck.losses import get_loss, risk
from sospcheck.model import Direction
from sospcheck.operators import HessianOperator, Layout
from sospcheck.point import evaluate_point


def theta_to_direction(theta, net):
    lay = Layout(net.dy, net.dh, net.dx + 1)
    U, Nu, c = lay.split(theta[:, None])
    return Direction.from_blocks(Nu[0], U[0], c[0])


@pytest.mark.parametrize("loss,dy,lam,s_minus", [("squared", 2, 0.0, 0.0), ("squared", 1, 0.3, 0.2),
                                                ("logistic", 1, 0.0, 0.0), ("cross_entropy", 3, 0.1, 0.05)])
def test_dense_hessian_matches_second_differences(loss, dy, lam, s_minus):
    rng = np.random.default_rng(3)
    m, dx, dh = 9, 2, 3
    X = rng.standard_normal((m, dx))
    net = TwoLayerNet(rng.standard_normal((dh, dx)), rng.standard_normal(dh), rng.standard_normal((dy, dh)),
                      rng.standard_normal(dy), s_minus=s_minus)
    L = get_loss(loss)
    Yraw = {"squared": rng.standard_normal((m, dy)), "logistic": rng.choice([-1.0, 1.0], m),
            "cross_entropy": rng.integers(0, dy, m)}[loss]
    Y = L.prepare(Yraw, dy)
    pt = evaluate_point(net, X, Y, L, 1.0, lam)
    J = net.slope(pt.fwd.N)
    H = HessianOperator(pt.fwd.O, pt.fwd.Xbar, net.W2, pt.r, pt.Hl, J, lam,
                        identity_hessian=loss == "squared").dense()
    n = H.shape[0]
    h = 1e-4
    R = lambda th: risk(net.perturbed(theta_to_direction(th, net)), X, Y, L, 1.0, lam)
    E = np.eye(n) * h
    Hfd = np.zeros((n, n))
    for i in range(n):
        for j in range(i, n):
            Hfd[i, j] = Hfd[j, i] = (R(E[i] + E[j]) - R(E[i] - E[j]) - R(E[j] - E[i]) + R(-E[i] - E[j])) / (4 * h * h)
    np.testing.assert_allclose(H, Hfd, atol=2e-5 * max(1, np.abs(H).max()))


def test_matmat_is_linear_and_symmetric():
    rng = np.random.default_rng(0)
    m, dh, rho, dy = 11, 4, 3, 2
    op = HessianOperator(rng.random((m, dh)), rng.standard_normal((m, rho)), rng.standard_normal((dy, dh)),
                         rng.standard_normal((m, dy)), np.broadcast_to(np.eye(dy), (m, dy, dy)),
                         rng.choice([0.0, 1.0], (m, dh)))
    n = op.layout.n
    A, B = rng.standard_normal((n, 3)), rng.standard_normal((n, 3))
    np.testing.assert_allclose(A.T @ op.matmat(B), (B.T @ op.matmat(A)).T, atol=1e-10)
    np.testing.assert_allclose(op.matmat(A + 2 * B), op.matmat(A) + 2 * op.matmat(B), atol=1e-10)


def test_chunked_data_passes_give_the_same_product():
    rng = np.random.default_rng(5)
    m, dh, rho, dy = 300, 6, 4, 3
    Hl = np.einsum("mij,mkj->mik", *(2 * [rng.standard_normal((m, dy, dy))]))
    op = HessianOperator(rng.random((m, dh)), rng.standard_normal((m, rho)), rng.standard_normal((dy, dh)),
                         rng.standard_normal((m, dy)), Hl, rng.choice([0.0, 1.0], (m, dh)), 0.1)
    T = rng.standard_normal((op.layout.n, 3))
    np.testing.assert_allclose(op.matmat(T), op.matmat(T, max_elements=50), rtol=1e-10, atol=1e-10)


def test_torch_backend_gives_the_same_products_and_verdicts():
    pytest.importorskip("torch")
    import cases
    from sospcheck import check
    from sospcheck.operators import TorchHessianOperator

    rng = np.random.default_rng(6)
    m, dh, rho, dy = 50, 4, 3, 2
    Hl = np.einsum("mij,mkj->mik", *(2 * [rng.standard_normal((m, dy, dy))]))
    args = (rng.random((m, dh)), rng.standard_normal((m, rho)), rng.standard_normal((dy, dh)),
            rng.standard_normal((m, dy)), Hl, rng.choice([0.0, 1.0], (m, dh)), 0.2)
    T = rng.standard_normal((HessianOperator(*args).layout.n, 3))
    np.testing.assert_allclose(TorchHessianOperator(*args, device="cpu").matmat(T), HessianOperator(*args).matmat(T),
                               rtol=1e-12, atol=1e-12)
    for make in (cases.smooth_saddle_dy2, cases.interpolating_kink_minimum):
        a = check(*make(), solver="matrix_free", backend="torch", device="cpu")
        b = check(*make(), solver="matrix_free")
        assert a.verdict == b.verdict


@pytest.mark.parametrize("loss,dy,lam,has_b2", [("squared", 2, 0.0, True), ("squared", 1, 0.3, False),
                                               ("logistic", 1, 0.0, True), ("cross_entropy", 3, 0.1, True)])
def test_dense_from_the_jacobian_gram_equals_dense_from_products(loss, dy, lam, has_b2):
    rng = np.random.default_rng(7)
    m, dx, dh = 50, 3, 4
    X = rng.standard_normal((m, dx))
    Y = {"squared": rng.standard_normal((m, dy)), "logistic": rng.choice([-1.0, 1.0], m),
         "cross_entropy": rng.integers(0, dy, m)}[loss]
    net = TwoLayerNet(rng.standard_normal((dh, dx)), rng.standard_normal(dh), rng.standard_normal((dy, dh)),
                      rng.standard_normal(dy) if has_b2 else None, s_minus=0.1)
    L = get_loss(loss)
    pt = evaluate_point(net, X, L.prepare(Y, dy), L, 0.5, lam)
    J = net.slope(pt.fwd.N).astype(float)
    J[rng.random(J.shape) < 0.2] = 1.0  # a slope pattern that is not the plain one (as on kinks)
    op = HessianOperator(pt.fwd.O, pt.fwd.Xbar, net.W2, pt.r, pt.Hl, J, lam, identity_hessian=loss == "squared",
                         has_b2=has_b2)
    n = op.layout.n
    for keep in (None, np.sort(rng.choice(n, n - 5, replace=False))):
        cols = np.arange(n) if keep is None else keep
        np.testing.assert_allclose(op.dense(keep), op._dense_by_products(cols, 7), rtol=1e-12, atol=1e-12)


def test_products_are_counted_per_column_and_shared_with_other_slopes():
    rng = np.random.default_rng(5)
    m, dx, dh = 7, 2, 3
    net = TwoLayerNet(rng.standard_normal((dh, dx)), rng.standard_normal(dh), rng.standard_normal((1, dh)), [0.0])
    L = get_loss("squared")
    X = rng.standard_normal((m, dx))
    pt = evaluate_point(net, X, L.prepare(rng.standard_normal(m), 1), L, 1.0, 0.0)
    op = HessianOperator(pt.fwd.O, pt.fwd.Xbar, net.W2, pt.r, pt.Hl, net.slope(pt.fwd.N), identity_hessian=True)
    n = op.layout.n
    op.matmat(np.ones((n, 3)))
    other = op.with_slopes(np.ones((m, dh)))
    other.matmat(np.ones((n, 2)))
    op.dense()  # formed from the Gram matrix of the Jacobian: no products
    assert op.products == other.products == 5


@pytest.mark.parametrize("loss,dy", [("squared", 2), ("cross_entropy", 3)])
def test_kronecker_factors_of_the_gauss_newton_part(loss, dy):
    rng = np.random.default_rng(8)
    m, dx, dh = 40, 3, 4
    X = rng.standard_normal((m, dx))
    net = TwoLayerNet(rng.standard_normal((dh, dx)), rng.standard_normal(dh), rng.standard_normal((dy, dh)),
                      rng.standard_normal(dy), s_minus=0.1)
    L = get_loss(loss)
    Yraw = {"squared": rng.standard_normal((m, dy)), "cross_entropy": rng.integers(0, dy, m)}[loss]
    pt = evaluate_point(net, X, L.prepare(Yraw, dy), L, 1.0, 0.0)
    J = net.slope(pt.fwd.N).astype(float)
    op = HessianOperator(pt.fwd.O, pt.fwd.Xbar, net.W2, pt.r, pt.Hl, J, identity_hessian=loss == "squared")
    Hbar, Go, mk = op.kronecker_factors()
    Oa = np.hstack([pt.fwd.O, np.ones((m, 1))])
    np.testing.assert_allclose(Go, Oa.T @ Oa, rtol=1e-12)
    np.testing.assert_allclose(Hbar, pt.Hl.mean(axis=0), rtol=1e-12, atol=1e-15)
    want = [np.mean(J[:, k] ** 2 * np.einsum("d,ide,e->i", net.W2[:, k], pt.Hl, net.W2[:, k])) for k in range(dh)]
    np.testing.assert_allclose(mk, want, rtol=1e-12)
    if loss == "squared":  # exact on [dW2 db2]: the dense Hessian's block
        lay = op.layout
        small = np.concatenate([np.arange(lay.n_u).reshape(dy, dh), (lay.n_u + dh * lay.rho + np.arange(dy))[:, None]],
                               axis=1).ravel()
        np.testing.assert_allclose(op.dense()[np.ix_(small, small)], np.kron(Hbar, Go), rtol=1e-12)
