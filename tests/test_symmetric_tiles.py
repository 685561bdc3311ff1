"""The reduced H as tiles of its lower block triangle: formation, rotations, the tiled Cholesky factor."""

import tracemalloc

import numpy as np
import pytest

import cases
import pieces
from sospcheck import dense_subspace
from sospcheck.dense_subspace import DenseSubspace
from sospcheck.margins import Margins
from sospcheck.reduced import ReducedProblem, constraint_blocks
from sospcheck.symmetric_tiles import SymmetricTiles, tile_bounds


def _tiles_of(H, bounds):
    S = SymmetricTiles(bounds)
    for i in range(S.count):
        for j in range(i + 1):
            S.tiles[i][j][...] = H[S._span(i), S._span(j)]
    return S


def _spd(n, seed=0, shift=1.0):
    A = np.random.default_rng(seed).standard_normal((n, n))
    return A @ A.T / n + shift * np.eye(n)


def test_tile_bounds_keep_groups_whole_and_cut_the_rest():
    assert tile_bounds([3, 3, 5, 1], 15, 4).tolist() == [0, 6, 11, 15]
    assert tile_bounds([2, 2], 13, 3).tolist() == [0, 4, 7, 10, 13]
    assert tile_bounds([], 5, 10).tolist() == [0, 5]
    assert tile_bounds([7], 7, 1).tolist() == [0, 7]
    # a short remainder (here b2 after ten neurons) joins the last tile instead of making its own
    assert tile_bounds([102] * 10, 1021, 64).tolist() == [0, 102, 204, 306, 408, 510, 612, 714, 816, 918, 1021]


def test_tiles_hold_half_the_square():
    S = SymmetricTiles([0, 10, 20, 30, 40])
    assert S.nbytes() == 8 * (40 * 40 + 4 * 10 * 10) // 2


def test_add_routes_symmetric_and_paired_blocks_through_a_permutation():
    rng = np.random.default_rng(1)
    n = 9
    where = rng.permutation(n)
    S = SymmetricTiles([0, 2, 5, 9])
    H = np.zeros((n, n))
    a, b = np.array([0, 3, 4]), np.array([1, 2, 7, 8])
    Ba = rng.standard_normal((3, 3))
    Ba = Ba + Ba.T
    Pab = rng.standard_normal((3, 4))
    S.add(S.route(where[a]), S.route(where[a]), Ba, symmetric=True)
    S.add(S.route(where[a]), S.route(where[b]), Pab, symmetric=False)
    S.add(S.route(where[5:7]), S.route(where[5:7]), Ba[:2, :2], symmetric=True)
    S.finish(lam=0.5)
    H[np.ix_(a, a)] += Ba
    H[np.ix_(a, b)] += Pab
    H[np.ix_(b, a)] += Pab.T
    H[5:7, 5:7] += Ba[:2, :2]
    H += 0.5 * np.eye(n)
    stored = np.empty_like(H)
    stored[np.ix_(where, where)] = H
    np.testing.assert_array_equal(S.dense(), stored)
    x = rng.standard_normal((n, 2))
    np.testing.assert_allclose(S.matmat(x), stored @ x, rtol=1e-13)
    np.testing.assert_allclose(S.operator() @ x[:, 0], stored @ x[:, 0], rtol=1e-13)


def test_rows_and_columns_rotate_and_zero_inside_one_tile():
    H = _spd(7)
    S = _tiles_of(H, [0, 3, 5, 7])
    Q = np.linalg.qr(np.random.default_rng(2).standard_normal((2, 2)))[0]
    views, idx = S.rows_and_columns(3, 2)
    for V in views:
        V[idx] = Q.T @ V[idx]
    G = np.eye(7)
    G[3:5, 3:5] = Q
    np.testing.assert_allclose(S.dense(), G.T @ H @ G, atol=1e-14)
    S.zero(np.array([0, 6]))
    D = S.dense()
    assert not D[[0, 6]].any() and not D[:, [0, 6]].any()
    with pytest.raises(ValueError, match="cross a tile boundary"):
        S.rows_and_columns(4, 2)


@pytest.mark.parametrize("bounds", [[0, 30], [0, 7, 8, 20, 30], list(range(31))])
def test_tiled_cholesky_factor_solves_and_products(bounds):
    A = _spd(30, seed=3)
    S = _tiles_of(A, bounds)
    assert S.cholesky() and S.factored
    L = np.linalg.cholesky(A)
    assert S.factor_sq() == pytest.approx(np.sum(L * L), rel=1e-12)
    B = np.random.default_rng(4).standard_normal((30, 3))
    np.testing.assert_allclose(S.solve(B), np.linalg.solve(A, B), rtol=1e-10)
    np.testing.assert_allclose(S.factor_times(B), A @ B, rtol=1e-12, atol=1e-12)


def test_tiled_cholesky_reports_an_indefinite_matrix_and_one_tile_gives_it_back():
    A = _spd(20, seed=5, shift=0.0) - 0.5 * np.eye(20)
    assert np.linalg.eigvalsh(A)[0] < 0
    S = _tiles_of(A, [0, 6, 13, 20])
    assert not S.cholesky() and not S.unfactor(np.diagonal(A))
    for B in (A, _spd(20)):  # failed or completed, a single tile keeps its strictly lower triangle
        one = SymmetricTiles.of_dense(B.copy())
        one.cholesky()
        assert one.unfactor(np.diagonal(B)) and not one.factored
        np.testing.assert_array_equal(one.dense(), B)


def _problem(make):
    pt, boundary, neurons, red = pieces.reduction(*make())
    prob = ReducedProblem.of(pt, red, boundary)
    return prob, constraint_blocks(prob, neurons, red)


@pytest.mark.parametrize("make", [cases.convex_kink_minimum, cases.icqp_one_sided_minimum,
                                  cases.interpolating_kink_minimum, cases.smooth_saddle_dy2])
def test_one_tile_per_block_answers_as_one_tile(make, monkeypatch):
    prob, blocks = _problem(make)
    R = np.random.default_rng(6).standard_normal((prob.n, 2))
    out = []
    monkeypatch.setattr(dense_subspace, "SQUARE_SHARE", 0.0)
    for target in (10**9, 1):
        monkeypatch.setattr(dense_subspace, "TILE_TARGET", target)
        sub = DenseSubspace(prob, blocks)
        assert sub.tiles.count == (1 if target > 1 else len(sub._bounds) - 1)
        eig_tol = 1e-9 * sub.hessian_norm
        out.append((sub.hessian_norm, sub.min_eig(eig_tol), sub.solve(R, eig_tol, Margins())))
    (n1, e1, x1), (n2, e2, x2) = out
    assert len(sub._bounds) > 2 and n1 == pytest.approx(n2, rel=1e-12)
    assert e1.value == pytest.approx(e2.value, rel=1e-9, abs=1e-12 * n1) and e1.detail[:12] == e2.detail[:12]
    np.testing.assert_allclose(x1, x2, rtol=1e-8, atol=1e-10 * np.abs(x1).max())


def test_a_solve_too_close_to_the_shift_takes_eigh(monkeypatch):
    # lambda_min = 1.25 times the Cholesky floor 2 F eig_tol: certified, but lambda_min(Qww - tau I)
    # is below 4 tau, so refinement through that factor would converge slowly: eigh solves instead
    prob, blocks = _problem(cases.convex_kink_minimum)
    monkeypatch.setattr(dense_subspace, "SQUARE_SHARE", 0.0)
    monkeypatch.setattr(dense_subspace, "TILE_TARGET", 1)
    probe = DenseSubspace(prob, blocks)
    assert probe.tiles.count > 1
    lmin = probe.min_eig(1e-12 * probe.hessian_norm).value
    sub = DenseSubspace(prob, blocks)
    eig_tol = lmin / 25.0
    assert "Cholesky" in sub.min_eig(eig_tol).detail
    R = np.random.default_rng(7).standard_normal((prob.n, 2))
    x = sub.solve(R, eig_tol, Margins())
    assert sub._spectrum is not None and sub.tiles is None
    ref = DenseSubspace(prob, blocks)
    np.testing.assert_allclose(x, ref.solve(R, 1e-12 * ref.hessian_norm, Margins()), rtol=1e-9,
                               atol=1e-12 * np.abs(x).max())
    assert ref._spectrum is None  # far from the shift: refined through the factor


def test_the_dense_solver_holds_about_half_of_h(monkeypatch):
    # n = 435 in 3 tiles: about 0.6 n^2 floats held; one square tile (as before tiles) peaked at 1.5 n^2
    prob, blocks = _problem(lambda: cases.sparsely_active_minimum(m=400, dx=60, dh=7))
    peaks = {}
    for target in (10**9, 64):
        monkeypatch.setattr(dense_subspace, "TILE_TARGET", target)
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        sub = DenseSubspace(prob, blocks)
        eig = sub.min_eig(1e-9 * sub.hessian_norm)
        peaks[target] = (tracemalloc.get_traced_memory()[1] - base) / (8.0 * prob.n**2)
        tracemalloc.stop()
        assert "Cholesky" in eig.detail
    assert prob.n > 400 and sub.tiles.count >= 3
    assert peaks[64] < 1.3 and peaks[64] < peaks[10**9] - 0.25, peaks


def test_h_small_next_to_the_data_stays_one_square(monkeypatch):
    # n = 435 against 400 x 61 data floats: tiles; with the data 100 times as large, one square tile,
    # whose failed factorisation is undone from its lower triangle instead of forming H again
    prob, blocks = _problem(lambda: cases.sparsely_active_minimum(m=400, dx=60, dh=7))
    assert DenseSubspace(prob, blocks).tiles.count > 1
    monkeypatch.setattr(dense_subspace, "SQUARE_SHARE", 100 * 0.25 * prob.n**2 / (400 * 61))
    sub = DenseSubspace(prob, blocks)
    assert sub.tiles.count == 1
    formed = []
    monkeypatch.setattr(sub, "_form", lambda *a, **k: formed.append(a))
    e = sub.min_eig(sub.hessian_norm)  # above every eigenvalue: the factorisation fails
    assert "eigh" in e.detail and not formed


def test_a_solve_after_eigh_took_over_uses_the_spectrum(monkeypatch):
    # a refinement that gives up hands the solve to eigh, which drops the factor: later solves of the
    # same certified subspace must use the spectrum, not the factor that is gone
    prob, blocks = _problem(cases.convex_kink_minimum)
    monkeypatch.setattr(dense_subspace, "SQUARE_SHARE", 0.0)
    monkeypatch.setattr(dense_subspace, "TILE_TARGET", 1)
    monkeypatch.setattr(dense_subspace, "_REFINE_STEPS", 0)
    sub = DenseSubspace(prob, blocks)
    eig_tol = 1e-9 * sub.hessian_norm
    R = np.random.default_rng(8).standard_normal((prob.n, 2))
    first = sub.solve(R, eig_tol, Margins())
    assert sub.tiles is None and sub._spectrum is not None
    np.testing.assert_array_equal(sub.solve(R, eig_tol, Margins()), first)
