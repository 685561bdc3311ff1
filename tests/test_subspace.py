"""The two ECQP subspace solvers behind one interface: same answers, no call-order coupling."""

import numpy as np
import pytest

import cases
import pieces
from sospcheck.margins import Margins
from sospcheck.reduced import ReducedProblem, constraint_blocks, particular_solutions
from sospcheck.dense_subspace import DenseSubspace
from sospcheck.krylov import KroneckerPreconditioner, preconditioned_lanczos
from sospcheck.subspace import ProjectedSubspace, SubspaceSolver, make_subspace


def _problem(net, X, Y):
    pt, boundary, neurons, red = pieces.reduction(net, X, Y)
    prob = ReducedProblem.of(pt, red, boundary)
    return prob, constraint_blocks(prob, neurons, red)


@pytest.mark.parametrize("make", [cases.icqp_one_sided_minimum, cases.interpolating_kink_minimum])
def test_dense_and_projected_agree_in_any_call_order(make):
    prob, blocks = _problem(*make())
    assert prob.flat_pairs
    dense, free = DenseSubspace(prob, blocks), ProjectedSubspace(prob, blocks)
    assert isinstance(dense, SubspaceSolver) and isinstance(free, SubspaceSolver)
    eig_tol = 1e-9 * dense.hessian_norm
    My = particular_solutions(prob, blocks)
    HMy = prob.apply(prob.J_base, My)
    # the solves first, before any eigenvalue: nothing is set up by min_eig
    Xd, Xf = dense.solve(HMy, eig_tol, Margins()), free.solve(HMy, eig_tol, Margins())
    assert np.allclose(Xd, Xf, atol=1e-8 * max(1.0, np.abs(Xd).max()))
    ed, ef = dense.min_eig(eig_tol), free.min_eig(eig_tol)
    assert ed.value == pytest.approx(ef.value, abs=1e-8 * dense.hessian_norm) and ed.accuracy == 0.0
    assert np.allclose(dense.solve(HMy, eig_tol, Margins()), Xd)
    assert dense.dim == free.dim and free.products > 0


def test_make_subspace_picks_dense_up_to_the_budget():
    prob, blocks = _problem(*cases.convex_kink_minimum())
    assert make_subspace(prob, blocks, "auto", 10**6).name == "dense"
    assert make_subspace(prob, blocks, "auto", 1).name == "matrix_free"
    assert make_subspace(prob, blocks, "matrix_free", 10**6).name == "matrix_free"


def _dense_qww(prob, blocks):
    """``Qww`` from its definition: ``H`` on an orthonormal basis of the complement of every block's ``QE``."""
    from scipy.linalg import null_space

    H = prob.operator(prob.J_base).dense(prob.keep)
    n = H.shape[0]
    cols, in_block = [], np.zeros(n, bool)
    for b in blocks:
        in_block[b.idx] = True
        C = np.zeros((n, b.idx.size - b.QE.shape[1]))
        C[b.idx] = null_space(b.QE.T) if b.QE.shape[1] else np.eye(b.idx.size)
        cols.append(C)
    free = np.flatnonzero(~in_block)
    F = np.zeros((n, free.size))
    F[free, np.arange(free.size)] = 1.0
    Mw = np.hstack(cols + [F])
    return Mw, Mw.T @ H @ Mw


@pytest.mark.parametrize("make", [cases.convex_kink_minimum, cases.always_active_minimum,
                                  cases.icqp_one_sided_minimum])
def test_cholesky_certificate_gives_the_eigh_value_and_solves(make):
    prob, blocks = _problem(*make())
    Mw, Qww = _dense_qww(prob, blocks)
    ew = np.linalg.eigvalsh(Qww)
    dense = DenseSubspace(prob, blocks)
    eig_tol = 1e-9 * dense.hessian_norm
    assert ew[0] > 2 * 10 * eig_tol  # benign: the factorisation decides
    e = dense.min_eig(eig_tol)
    assert "Cholesky" in e.detail and e.accuracy == 0.0
    assert e.value == pytest.approx(ew[0], rel=1e-10)
    v = e.vector
    assert np.linalg.norm(v) == pytest.approx(1.0) and np.allclose(Mw @ (Mw.T @ v), v)  # in the ECQP subspace
    R = np.random.default_rng(0).standard_normal((prob.n, 3))
    margins = Margins()
    np.testing.assert_allclose(dense.solve(R, eig_tol, margins), Mw @ np.linalg.solve(Qww, Mw.T @ R), rtol=1e-9,
                               atol=1e-12 * np.abs(R).max())
    assert dict(margins.items())["ICQP: eigenvalues of Qww"] == pytest.approx(ew[0] / eig_tol, rel=1e-8)
    assert dense.unbounded_direction(None, R, None, eig_tol, Margins()) is None


def test_an_eigenvalue_within_twice_the_fragility_band_falls_back_to_eigh():
    # eig_tol set so that lambda_min is 15 eig_tol: above the tolerance, below the Cholesky shift 2 F eig_tol
    prob, blocks = _problem(*cases.convex_kink_minimum())
    lmin = np.linalg.eigvalsh(_dense_qww(prob, blocks)[1])[0]
    dense = DenseSubspace(prob, blocks)
    e = dense.min_eig(lmin / 15)
    assert "eigh" in e.detail and e.value == pytest.approx(lmin, rel=1e-10) and e.accuracy == 0.0
    # the spectrum now serves every tolerance, also one that would have certified
    assert "eigh" in dense.min_eig(lmin / 1e4).detail


def test_kronecker_preconditioner_is_the_inverse_of_its_matrix_on_the_kept_coordinates():
    prob, blocks = _problem(*cases.smooth_saddle_dy2())
    op = prob.operator(prob.J_base)
    Hbar, Go, mk = op.kronecker_factors()
    lay = prob.layout
    B = np.zeros((lay.n, lay.n))
    small = np.concatenate([np.arange(lay.n_u).reshape(lay.dy, lay.dh),
                            (lay.n_u + lay.dh * lay.rho + np.arange(lay.dy))[:, None]], axis=1)  # [dW2 db2]
    B[np.ix_(small.ravel(), small.ravel())] = np.kron(Hbar, Go)
    for k in range(lay.dh):
        B[np.ix_(lay.nu_index(k), lay.nu_index(k))] = mk[k] * prob.xr_gram()
    K = KroneckerPreconditioner(prob)
    E = np.eye(prob.n)
    Kmat = K(E)
    np.testing.assert_allclose(Kmat, Kmat.T, atol=1e-12 * np.abs(Kmat).max())
    np.testing.assert_allclose(Kmat, np.linalg.inv(B)[np.ix_(prob.keep, prob.keep)], rtol=1e-8,
                               atol=1e-10 * np.abs(Kmat).max())


def _spd(rng, n, lo, hi):
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * rng.uniform(lo, hi, n)) @ Q.T


def test_preconditioned_lanczos_reads_the_sign_of_the_smallest_eigenvalue():
    rng = np.random.default_rng(2)
    n = 120
    K = np.linalg.inv(_spd(rng, n, 0.5, 5.0))
    A_pos = _spd(rng, n, 1e-3, 10.0)
    found = preconditioned_lanczos(lambda x: A_pos @ x, lambda x: K @ x, rng.standard_normal(n), n, 0.1)
    assert found[0] == "positive" and found[1] > 0 and found[2] <= 0.1 * found[1]
    x = found[3]
    assert x @ A_pos @ x / (x @ x) >= np.linalg.eigvalsh(A_pos)[0] - 1e-12  # a Rayleigh quotient: an upper bound
    # one negative eigenvalue: the callback sees a vector of negative curvature and may accept it
    u = np.linalg.eigh(A_pos)[1][:, 0]
    A_neg = A_pos - 2.0 * np.outer(u, u) - 0.01 * np.eye(n)
    kind, value, x = preconditioned_lanczos(lambda x: A_neg @ x, lambda x: K @ x, rng.standard_normal(n), n, 0.1,
                                            negative=lambda x: float(x @ A_neg @ x / (x @ x)))
    assert kind == "negative" and value < 0 and value == pytest.approx(x @ A_neg @ x / (x @ x))
    refused = preconditioned_lanczos(lambda x: A_neg @ x, lambda x: K @ x, rng.standard_normal(n), n, 0.1,
                                     negative=lambda x: None)
    assert refused[0] == "nonpositive" and refused[1] < 0
