"""Cells and faces of central arrangements against brute force (sospcheck.arrangement, DESIGN.md section 9)."""

from itertools import product

import numpy as np
import pytest
from scipy.optimize import linprog, nnls

from sospcheck.arrangement import (COMPLETE, OVER_BUDGET, count_cells, enumerate_cells, enumerate_faces,
                                   group_hyperplanes, region_bound)
from sospcheck.arrangement_rays import enumerate_rays


def _feasible(A_gt: np.ndarray, A_eq: np.ndarray | None = None) -> bool:
    """Brute force: is ``{y : A_gt y > 0, A_eq y = 0}`` nonempty? (max margin, default HiGHS)."""
    q = A_gt.shape[1]
    if A_gt.shape[0] == 0:
        return True
    kw = {} if A_eq is None or A_eq.shape[0] == 0 else dict(A_eq=np.c_[A_eq, np.zeros(len(A_eq))],
                                                            b_eq=np.zeros(len(A_eq)))
    G = A_gt / np.linalg.norm(A_gt, axis=1, keepdims=True)
    res = linprog(np.r_[np.zeros(q), -1.0], A_ub=np.c_[-G, np.ones(len(G))], b_ub=np.zeros(len(G)),
                  bounds=[(-1, 1)] * q + [(None, 1)], method="highs", **kw)
    return res.status == 0 and -res.fun > 1e-6


def exhaustive_row_signs(rows: np.ndarray, witnessed: set = frozenset()) -> set:
    """Every ``sigma in {-1, +1}^M`` over the (nonzero) ROWS with a nonempty open cell: one LP per sign
    vector, except those ``witnessed`` by a sampled point."""
    nz = np.flatnonzero(np.linalg.norm(rows, axis=1) > 0)
    out = set()
    for s in product((1, -1), repeat=len(nz)):
        full = np.zeros(len(rows), int)
        full[nz] = s
        if tuple(full) in witnessed or _feasible(np.array(s)[:, None] * rows[nz]):
            out.add(tuple(full))
    return out


def sampled_row_signs(rows: np.ndarray, rng, n: int = 20000) -> set:
    V = rng.standard_normal((n, rows.shape[1]))
    T = V @ rows.T
    scale = np.linalg.norm(rows, axis=1)
    keep = np.all((np.abs(T) > 1e-6 * scale[None, :]) | (scale[None, :] == 0), axis=1)
    return {tuple(s) for s in np.sign(T[keep]).astype(int)}


def arrangements(seed: int):
    """(name, rows) of degenerate and generic arrangements, at most 10 nonzero rows."""
    rng = np.random.default_rng(seed)
    xs = rng.integers(-3, 4, size=(4, 2)).astype(float)
    line = np.array([[0, 0, 1], [1, 1, 1], [2, 2, 1], [-1, -1, 1]], float)  # collinear points [x, 1] in dx = 2
    out = [
        ("generic r3", rng.standard_normal((6, 3))),
        ("generic r4", rng.standard_normal((8, 4))),
        ("duplicates", np.repeat(rng.integers(-2, 3, size=(3, 3)).astype(float), [2, 1, 3], axis=0)),
        ("collinear triple", line[:3]),
        ("collinear 4 + other", np.vstack([line, [[1, -1, 1], [2, 0, 1]]])),
        ("origin pairs", np.vstack([xs, -xs[:2], 2 * xs[2:3]])),
        ("x, -x, 2x in R^2", np.array([[1.0, 2.0], [-1.0, -2.0], [2.0, 4.0], [1.0, 0.0]])),
        ("rank deficient", rng.integers(-2, 3, size=(7, 2)) @ rng.integers(-2, 3, size=(2, 4)).astype(float)),
        ("rank 3 in R^5", rng.standard_normal((10, 3)) @ rng.standard_normal((3, 5))),
        ("coplanar in R^4", np.c_[np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [2, -1, 0]], float),
                                  np.ones(5)]),
        ("zero rows", np.vstack([np.zeros((2, 3)), rng.integers(-2, 3, size=(4, 3)).astype(float)])),
        ("three concurrent + one", np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 2, 3]], float)),
    ]
    return [(n, r) for n, r in out if np.any(r)]


@pytest.mark.parametrize("name,rows", arrangements(0), ids=[n for n, _ in arrangements(0)])
def test_cells_equal_exhaustive_enumeration_and_contain_sampled_signs(name, rows):
    cells = enumerate_cells(rows)
    assert cells.status == COMPLETE
    got = {tuple(s) for s in cells.row_signs().astype(int)}
    assert len(got) == cells.n_cells  # no sign vector twice
    sampled = sampled_row_signs(rows, np.random.default_rng(1))
    assert sampled <= got
    assert got == exhaustive_row_signs(rows, sampled), name
    # each interior point realises its cell with the reported margin
    hp = cells.hyperplanes
    M = (cells.points @ hp.normals.T) * cells.signs
    assert np.all(np.abs(M.min(axis=1, initial=np.inf) - cells.margins) <= 1e-12) and np.all(cells.margins > 0)
    # the count made before solving bounds the truth, and is the truth when it says so
    assert cells.count >= cells.n_cells and cells.bound >= cells.count
    if cells.count_exact:
        assert cells.count == cells.n_cells, name


def test_grouping_merges_parallel_rows_and_ignores_zero_rows():
    rows = np.array([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [-1.0, -2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    hp = group_hyperplanes(rows)
    assert hp.n == 2 and hp.rank == 2
    assert hp.group.tolist() == [0, 0, 0, -1, 1]
    assert hp.orient.tolist() == [1, 1, -1, 0, 1]
    np.testing.assert_allclose(hp.scale[:, None] * hp.orient[:, None] * hp.normals[np.maximum(hp.group, 0)],
                               rows, atol=1e-15)
    # a tilt far above the tolerance is a different hyperplane; one at rounding level is not
    assert group_hyperplanes(np.array([[1.0, 0.0], [1.0, 1e-6]])).n == 2
    assert group_hyperplanes(np.array([[1.0, 0.0], [-3.0, 1e-14]])).n == 1


def test_count_bound_is_attained_in_general_position_and_exceeded_by_nothing():
    rng = np.random.default_rng(5)
    for n, r in ((4, 2), (5, 3), (7, 3), (6, 4), (7, 5)):
        U = rng.standard_normal((n, r))
        U /= np.linalg.norm(U, axis=1, keepdims=True)
        count, exact = count_cells(U)
        assert exact and count == region_bound(n, r)
        assert enumerate_cells(U).n_cells == count
    assert region_bound(5, 5) == 2**5 and region_bound(4, 1) == 2 and region_bound(0, 0) == 1
    # non-generic rank 3: three planes through one line plus a generic one -> 12, not the bound 14
    U = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 2, 3]], float)
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    assert count_cells(U) == (12, True) and region_bound(4, 3) == 14
    assert enumerate_cells(U).n_cells == 12
    # rank 4, not in general position: only the bound, which the truth does not exceed
    U = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]], float)
    count, exact = count_cells(U / np.linalg.norm(U, axis=1, keepdims=True))
    assert not exact and count >= enumerate_cells(U).n_cells


def test_over_budget_reports_the_count_and_solves_nothing():
    U = np.random.default_rng(2).standard_normal((14, 6))
    cells = enumerate_cells(U, max_cells=1000)
    assert cells.status == OVER_BUDGET and cells.n_lps == 0 and cells.n_cells == 0
    assert cells.count == region_bound(14, 6) > 1000 and "max_cells = 1000" in cells.message
    with pytest.raises(ValueError, match="max_cells"):
        enumerate_cells(U, max_cells=0)


def exhaustive_faces(rows: np.ndarray) -> set:
    """Every ``tau in {-1, 0, +1}^n`` over distinct unit normals with a nonempty relative interior: 3^n LPs."""
    out = set()
    for tau in product((1, 0, -1), repeat=len(rows)):
        t = np.array(tau)
        if _feasible(t[t != 0][:, None] * rows[t != 0], rows[t == 0]):
            out.add(tau)
    return out


@pytest.mark.parametrize("name", ["collinear triple", "three concurrent + one", "x, -x, 2x in R^2", "generic r3",
                                  "coplanar in R^4"])
def test_face_lattice_equals_exhaustive_and_satisfies_euler(name):
    rows = dict(arrangements(0))[name][:5]  # 3^5 LPs in the brute force
    faces = enumerate_faces(rows)
    hp = faces.hyperplanes
    assert faces.status == COMPLETE
    got = {tuple(s) for s in faces.signs.astype(int)}
    assert len(got) == faces.n_faces
    assert got == exhaustive_faces(hp.normals)
    # relative-interior points have the stated signs
    T = faces.points @ hp.normals.T
    assert np.all(np.where(faces.signs == 0, np.abs(T) <= 1e-12, faces.signs * T > 0))
    # Euler relation of a complete fan with lineality space L: sum (-1)^dim = (-1)^d
    assert sum((-1) ** int(k) for k in faces.dims) == (-1) ** hp.d
    cells = enumerate_cells(rows)
    full = faces.signs[faces.dims == hp.d].astype(int)
    assert {tuple(s) for s in full} == {tuple(s) for s in cells.signs.astype(int)}
    # faces of one cell = the faces of the lattice below it
    for sigma in cells.signs[:: max(1, cells.n_cells // 6)]:
        mine = enumerate_faces(hp, cell=sigma)
        below = {f for f in got if all(t in (0, s) for t, s in zip(f, sigma))}
        assert {tuple(s) for s in mine.signs.astype(int)} == below


def test_faces_budget_and_bad_cell():
    rows = np.random.default_rng(3).standard_normal((6, 3))
    assert enumerate_faces(rows, max_faces=10).status == OVER_BUDGET  # 32 cells already exceed it
    faces = enumerate_faces(rows, max_faces=40)
    assert faces.status == OVER_BUDGET and faces.n_faces > 40 and "max_faces = 40" in faces.message
    with pytest.raises(ValueError, match="sign vector"):
        enumerate_faces(rows, cell=[1, 0, 1, 1, 1, 1])


def test_a_miscounted_arrangement_still_stops_at_the_budget(monkeypatch):
    import sospcheck.arrangement as arr

    monkeypatch.setattr(arr, "count_cells", lambda U, tol: (4, True))  # a wrong "exact" count
    cells = arr.enumerate_cells(np.random.default_rng(4).standard_normal((6, 3)), max_cells=20)
    assert cells.status == OVER_BUDGET and cells.count == 21 and not cells.count_exact


def test_cone_projection_falls_back_to_bvls_when_nnls_stalls(monkeypatch):
    import sospcheck.arrangement as arr

    rng = np.random.default_rng(6)
    walls, x = rng.standard_normal((5, 3)), rng.standard_normal(3)
    p = arr.cone_projection(walls, x)
    assert np.all(walls @ p >= -1e-12) and abs(p @ (x - p)) <= 1e-12  # in C, and x - p is orthogonal to it

    def stalled(*args, **kw):
        raise RuntimeError("Maximum number of iterations reached.")

    monkeypatch.setattr(arr, "nnls", stalled)
    np.testing.assert_allclose(arr.cone_projection(walls, x), p, atol=1e-10)
    np.testing.assert_allclose(arr.cone_projection(np.zeros((0, 3)), x), x)


RAY_ARRANGEMENTS = {
    "collinear 4 (rank 2)": np.array([[0, 0, 1], [1, 1, 1], [2, 2, 1], [-1, -1, 1]], float),
    "coplanar 5 (rank 3)": np.c_[np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [2, -1, 0]], float),
                                 np.ones(5)],
    "duplicates (rank 3)": np.repeat(np.array([[1.0, 0, 1], [0, 1, 1], [1, 1, 0], [1, -1, 2]]), 2, axis=0),
    "x, -x, 2x": np.array([[1.0, 2.0], [-1.0, -2.0], [2.0, 4.0]]),
    "generic rank 4": np.random.default_rng(3).standard_normal((7, 4)),
}


@pytest.mark.parametrize("name", list(RAY_ARRANGEMENTS))
def test_rays_are_the_one_dimensional_faces_and_generate_every_cell(name):
    rows = RAY_ARRANGEMENTS[name]
    rays = enumerate_rays(rows)
    hp = rays.hyperplanes
    faces = enumerate_faces(rows)
    lineality = hp.d - hp.rank
    one_dim = {tuple(t) for t, dim in zip(faces.signs.tolist(), faces.dims) if dim == lineality + 1}
    assert {tuple(t) for t in rays.signs.tolist()} == one_dim
    np.testing.assert_allclose(np.linalg.norm(rays.directions, axis=1), 1.0)
    cells = enumerate_cells(rows)
    inside = rays.in_cells(cells.signs.astype(int))
    index = {tuple(sig): j for j, sig in enumerate(cells.signs.tolist())}
    # the cells' interior points and random points (within the span of the normals), each in its cell
    P = np.vstack([cells.points, np.random.default_rng(0).standard_normal((300, hp.d))]) @ hp.basis @ hp.basis.T
    for p in P:
        j = index[tuple(np.sign(hp.normals @ p).astype(int).tolist())]
        R = rays.directions[inside[j]]
        assert np.all(R @ (cells.signs[j][:, None] * hp.normals).T >= -1e-12)  # its rays lie in the closed cell
        _, res = nnls(R.T, p)  # and generate it
        assert res <= 1e-9 * np.linalg.norm(p)
