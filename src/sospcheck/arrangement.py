"""Cells and faces of a central hyperplane arrangement (DESIGN.md section 9).

The hyperplanes are ``{v : xbar_i . v = 0}`` for the rows ``xbar_i`` of a neuron's boundary matrix.
Rows that are parallel (``x`` and ``2x``, ``x`` and ``-x``, exact duplicates) give one hyperplane, so
they are merged first (:func:`group_hyperplanes`); the arrangement then lives in the span of the
distinct normals (rank ``r``), the rest of ``R^d`` being its lineality space.

A *cell* is a full-dimensional region ``{v : sigma_j n_j . v > 0}``, named by its sign vector
``sigma in {-1, +1}^n``; a *face* is a nonempty ``{v : tau_j n_j . v > 0 (tau_j != 0), n_j . v = 0
(tau_j = 0)}``, ``tau in {-1, 0, +1}^n``. Cells are found by incremental construction: add the
hyperplanes one at a time; a cell with walls ``W`` (closed cone ``C``) keeps the side ``s`` of the new
hyperplane ``n_h`` iff some unit vector of ``C`` lies beyond it, ``|P_C(s n_h)| > margin`` (Farkas: the
side is empty iff ``-s n_h`` is in the cone of the walls). ``P_C`` is one nonnegative least squares
(:func:`cone_projection`) instead of an LP. Each final cell gets an interior point, built from the
projections of its walls and checked (an LP only when rounding defeats that).
The number of cells is counted before anything is solved (:func:`count_cells`) and compared with the
budget: at most ``2 sum_{i<r} C(n-1, i)`` (exact for hyperplanes in general position, and computed
exactly for rank <= 3), at most ``2^n``.

A side that no unit vector of the cell passes by more than ``margin`` (relative: the normals are unit)
is dropped: such a sliver counts as lower-dimensional, the same call as merging rows within ``tol`` of
parallel into one hyperplane (DESIGN.md section 9).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from math import comb

import numpy as np
from scipy.linalg import null_space
from scipy.optimize import linprog, lsq_linear, nnls

__all__ = ["COMPLETE", "OVER_BUDGET", "DEFAULT_MAX_CELLS", "DEFAULT_MAX_FACES", "MARGIN", "RANK_TOL",
           "Hyperplanes", "Cells", "Faces", "group_hyperplanes", "region_bound", "count_cells", "polar_multipliers",
           "cone_projection", "enumerate_cells", "enumerate_faces"]

COMPLETE = "complete"
OVER_BUDGET = "over budget"
DEFAULT_MAX_CELLS = 4096  # every arrangement of <= 12 hyperplanes fits (at most 2^12 cells)
DEFAULT_MAX_FACES = 3**9
MARGIN = 1e-9
RANK_TOL = 1e-10  # Tolerances().rank
# HiGHS' default feasibility tolerances (1e-7) are far above MARGIN; tighter ones keep the margins meaningful
_HIGHS = {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10}
_GENERAL_POSITION_SUBSETS = 4000  # most r-subsets whose rank is checked to make the bound exact


@dataclass(frozen=True)
class Hyperplanes:
    """The distinct hyperplanes of the rows of a matrix.

    Row ``i`` is ``scale[i] * orient[i] * normals[group[i]]`` with unit ``normals``; a zero row
    (``scale[i] == 0``) is no hyperplane: ``group[i] = -1``, ``orient[i] = 0``. ``basis`` (d x rank)
    is an orthonormal basis of the span of the normals.
    """

    normals: np.ndarray  # (n, d)
    group: np.ndarray  # (M,) int
    orient: np.ndarray  # (M,) +1, -1 or 0
    scale: np.ndarray  # (M,)
    basis: np.ndarray  # (d, rank)
    tol: float

    @property
    def n(self) -> int:
        return self.normals.shape[0]

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    @property
    def d(self) -> int:
        return self.normals.shape[1]

    def reduced(self) -> np.ndarray:
        """Unit normals in the coordinates of ``basis`` (n x rank): the essential arrangement."""
        return _unit_rows(self.normals @ self.basis)

    def row_signs(self, signs: np.ndarray) -> np.ndarray:
        """Signs of ``xbar_i . v`` (``(..., M)``) from signs over the distinct hyperplanes (``(..., n)``)."""
        signs = np.asarray(signs)
        padded = np.concatenate([signs, np.zeros(signs.shape[:-1] + (1,), signs.dtype)], axis=-1)
        return (padded[..., self.group] * self.orient).astype(np.int8)


@dataclass(frozen=True)
class Cells:
    """The full-dimensional cells of an arrangement, or why they were not enumerated.

    status: ``"complete"`` or ``"over budget"`` (then ``signs`` is empty and ``count`` is the count
    that exceeded ``max_cells``). signs (n_cells, n): ``sigma`` over the distinct hyperplanes.
    points (n_cells, d): an interior point of each cell, ``|p|_inf = 1`` in the reduced coordinates,
    with ``min_j sigma_j n_j . p = margins > 0``.
    count: the number of cells known before solving (``count_exact``) or its upper bound ``bound``.
    n_nnls, n_lps: cone projections (NNLS) and LPs solved.
    """

    status: str
    message: str
    hyperplanes: Hyperplanes
    signs: np.ndarray
    points: np.ndarray
    margins: np.ndarray
    count: int
    count_exact: bool
    bound: int
    max_cells: int
    n_lps: int
    n_nnls: int

    @property
    def n_cells(self) -> int:
        return int(self.signs.shape[0])

    def row_signs(self) -> np.ndarray:
        """(n_cells, M): the sign of ``xbar_i . v`` in each cell (0 for a zero row)."""
        return self.hyperplanes.row_signs(self.signs)


@dataclass(frozen=True)
class Faces:
    """Faces ``tau in {-1, 0, +1}^n`` (of one cell, or of the whole arrangement) with a point of each
    relative interior and the dimension of each face in ``R^d`` (lineality space included).

    status: ``"complete"`` or ``"over budget"`` (the faces found before ``max_faces`` was exceeded).
    """

    status: str
    message: str
    hyperplanes: Hyperplanes
    signs: np.ndarray
    points: np.ndarray
    dims: np.ndarray
    n_lps: int
    n_nnls: int

    @property
    def n_faces(self) -> int:
        return int(self.signs.shape[0])

    def row_signs(self) -> np.ndarray:
        return self.hyperplanes.row_signs(self.signs)


def _unit_rows(A: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(A, axis=1, keepdims=True)
    return A / np.where(norms > 0, norms, 1.0)


def _as_rows(rows, name: str = "rows") -> np.ndarray:
    A = np.asarray(rows, dtype=float)
    if A.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-d array (one normal per row), got shape {A.shape}")
    if not np.all(np.isfinite(A)):
        raise ValueError(f"`{name}` contains NaN or infinite values")
    return A


def group_hyperplanes(rows, tol: float = RANK_TOL) -> Hyperplanes:
    """Merge rows that span the same line (same hyperplane ``{v : row . v = 0}``).

    Two unit rows ``u, w`` are the same hyperplane when ``min |u -+ w| <= 2 tol`` (the chord; the smaller
    singular value of ``[u; w]`` is about half of it, so this is the rank test with ``Tolerances.rank``).
    A row of norm ``<= tol * max_i |row_i|`` is zero.
    """
    A = _as_rows(rows)
    M, d = A.shape
    scale = np.linalg.norm(A, axis=1)
    top = float(scale.max(initial=0.0))
    zero = scale <= tol * top if top > 0 else np.ones(M, bool)
    group = np.full(M, -1, dtype=int)
    orient = np.zeros(M, dtype=np.int8)
    normals: list[np.ndarray] = []
    for i in np.flatnonzero(~zero):
        u = A[i] / scale[i]
        if normals:
            Nm = np.array(normals)
            dots = Nm @ u
            s = np.where(dots >= 0, 1.0, -1.0)
            chord = np.linalg.norm(u[None, :] - s[:, None] * Nm, axis=1)
            j = int(np.argmin(chord))
            if chord[j] <= 2 * tol:
                group[i], orient[i] = j, int(s[j])
                continue
        group[i], orient[i] = len(normals), 1
        normals.append(u)
    Nm = np.array(normals).reshape(len(normals), d)
    scale = np.where(zero, 0.0, scale)
    return Hyperplanes(Nm, group, orient, scale, _span(Nm, tol), float(tol))


def _span(A: np.ndarray, tol: float) -> np.ndarray:
    if A.shape[0] == 0:
        return np.zeros((A.shape[1], 0))
    _, s, Vt = np.linalg.svd(A, full_matrices=False)
    return Vt[: int(np.sum(s > tol * s[0]))].T


def region_bound(n: int, rank: int) -> int:
    """``2 sum_{i<rank} C(n-1, i)``: the most cells of a central arrangement of ``n`` distinct
    hyperplanes of rank ``rank`` (attained in general position; Cover 1965, Zaslavsky 1975)."""
    if n == 0 or rank == 0:
        return 1
    return 2 * sum(comb(n - 1, i) for i in range(rank))


def count_cells(U: np.ndarray, tol: float = RANK_TOL) -> tuple[int, bool]:
    """Number of cells of the essential arrangement with unit normals ``U`` (n x r, rank r, distinct),
    and whether it is exact.

    Exact for rank <= 2 (``2n``), for rank 3 (``2 (1 + sum_lines (m_l - 1))`` over the lines where
    ``m_l >= 2`` planes meet, Zaslavsky's formula), and in general position (every ``r`` normals
    independent, checked when there are few ``r``-subsets), where the bound is attained; otherwise
    :func:`region_bound`.
    """
    n, r = U.shape
    bound = region_bound(n, r)
    if r <= 2 or n <= r:
        return bound, True
    if r == 3:
        lines = set()
        for i in range(n):
            for j in range(i + 1, n):
                ell = np.cross(U[i], U[j])
                ell /= np.linalg.norm(ell)
                lines.add(frozenset(np.flatnonzero(np.abs(U @ ell) <= tol).tolist()))
        return 2 * (1 + sum(len(s) - 1 for s in lines)), True
    if comb(n, r) <= _GENERAL_POSITION_SUBSETS:
        for S in combinations(range(n), r):
            s = np.linalg.svd(U[list(S)], compute_uv=False)
            if s[-1] <= tol * s[0]:
                return bound, False
        return bound, True
    return bound, False


def polar_multipliers(walls: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``lam* = argmin_{lam >= 0} |walls' lam + x|`` (NNLS): ``-walls' lam*`` is the projection of ``x``
    onto the polar cone of ``C = {y : walls_j . y >= 0}``."""
    if walls.shape[0] == 0:
        return np.zeros(0)
    try:
        return nnls(walls.T, -x, maxiter=50 * walls.shape[0])[0]
    except RuntimeError:  # NNLS stalled: the bounded-variable solver answers the same problem
        return lsq_linear(walls.T, -x, bounds=(0.0, np.inf), method="bvls").x


def cone_projection(walls: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``P_C(x)``, the Euclidean projection onto the cone ``C = {y : walls_j . y >= 0}``.

    Moreau: ``x = P_C(x) + P_{C*}(x)`` with the polar cone ``C* = {-walls' lam : lam >= 0}``, so
    ``P_C(x) = x + walls' lam*`` (:func:`polar_multipliers`). Its norm is ``max {x . y : y in C,
    |y| <= 1}`` (0 iff ``x`` is in the polar cone).
    """
    return x + walls.T @ polar_multipliers(walls, x)


def _max_margin(U: np.ndarray, sigma: np.ndarray, B: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """``max t`` s.t. ``sigma_j U_j . y >= t``, ``|y|_inf <= 1`` (``y = B w`` when a flat basis ``B``
    is given): a point of the region and its margin, recomputed from the point."""
    S = sigma[:, None] * U
    G = S if B is None else S @ B
    q = G.shape[1]
    res = linprog(np.r_[np.zeros(q), -1.0], A_ub=np.c_[-G, np.ones(len(G))], b_ub=np.zeros(len(G)),
                  bounds=[(-1.0, 1.0)] * q + [(None, 1.0)], method="highs", options=_HIGHS)
    if res.status != 0:
        return np.zeros(q), -np.inf
    w = res.x[:q]
    return w, float(np.min(G @ w, initial=np.inf))


def _interior_point(walls: np.ndarray) -> tuple[np.ndarray, float, int]:
    """A point of the open cell ``{walls y > 0}`` with ``|y|_inf = 1``, its margin, and LPs used.

    ``p_j = P_C(walls_j)`` is nonzero for every wall of a full-dimensional cell and has
    ``walls_j . p_j = |p_j|^2``, ``walls p_j >= 0``; so ``sum_j p_j / |p_j|`` is interior. The max-margin
    LP is the fallback when rounding leaves that point on a wall."""
    P = np.array([cone_projection(walls, w) for w in walls])
    norms = np.linalg.norm(P, axis=1)
    if np.all(norms > 0):
        y = (P / norms[:, None]).sum(axis=0)
        y /= np.abs(y).max()
        m = float(np.min(walls @ y))
        if m > 0:
            return y, m, 0
    y, m = _max_margin(walls, np.ones(len(walls)))
    return y, m, 1


def _incremental(G: np.ndarray, margin: float, limit: int):
    """Cells of the arrangement of the distinct unit normals ``G`` (n x q, spanning ``R^q``): signs
    (n_cells, n), interior points, their margins, LPs and NNLS solved; None past ``limit`` cells (a
    safeguard: the count made before is exact or a bound, so only a miscount can reach it).

    Adding hyperplane ``h`` to a cell with walls ``W``: the side ``s`` is open iff ``-s G_h`` is not in
    the cone spanned by the walls (Farkas), i.e. iff ``|P_C(s G_h)| > margin``. At least one side of a
    cell stays, so the second test is needed only when the first side is open."""
    n, q = G.shape
    if n == 0:
        return np.zeros((1, 0), np.int8), np.zeros((1, q)), np.array([np.inf]), 0, 0
    cells = [np.array([1.0]), np.array([-1.0])]
    n_nnls = 0
    for h in range(1, n):
        grown = []
        for sig in cells:
            W = sig[:, None] * G[:h]
            plus = np.linalg.norm(cone_projection(W, G[h])) > margin
            minus = not plus or np.linalg.norm(cone_projection(W, -G[h])) > margin
            n_nnls += 1 + plus
            grown += [np.r_[sig, s] for s, keep in ((1.0, plus), (-1.0, minus)) if keep]
        cells = grown
        if len(cells) > limit:
            return None
    kept, pts, margins, n_lps = [], [], [], 0
    for sig in cells:
        y, m, lps = _interior_point(sig[:, None] * G)
        n_lps += lps
        n_nnls += len(sig)
        if m > 0:  # a cell must show a point strictly inside (only a sliver at rounding level has none)
            kept.append(sig)
            pts.append(y)
            margins.append(m)
    return np.array(kept, np.int8).reshape(-1, n), np.array(pts).reshape(-1, q), np.array(margins), n_lps, n_nnls


def enumerate_cells(rows, max_cells: int = DEFAULT_MAX_CELLS, tol: float = RANK_TOL,
                    margin: float = MARGIN) -> Cells:
    """The full-dimensional cells of the central arrangement ``{v : row_i . v = 0}``.

    Args:
        rows: (M, d) normals, e.g. a neuron's boundary rows ``xbar_i, i in B_k``; parallel and
            duplicated rows are merged, zero rows ignored.
        max_cells: budget; when the count (exact or bound, see :func:`count_cells`) exceeds it, no LP
            is solved and the status is ``"over budget"``.
        tol: rank / parallelism tolerance (``Tolerances.rank``).
        margin: a side of a new hyperplane counts when some unit vector of the cell lies more than
            ``margin`` beyond it.

    Returns:
        :class:`Cells`; ``n_cells == count`` whenever the count is exact and no cell is thinner than
        ``margin``.
    """
    if not (isinstance(max_cells, (int, np.integer)) and max_cells >= 1):
        raise ValueError(f"`max_cells` must be a positive integer, got {max_cells!r}")
    hp = group_hyperplanes(rows, tol)
    U = hp.reduced()
    bound = region_bound(hp.n, hp.rank)
    count, exact = count_cells(U, tol)
    base = dict(hyperplanes=hp, count=count, count_exact=exact, bound=bound, max_cells=int(max_cells))
    if count > max_cells:
        what = "cells" if exact else "cells at most (bound)"
        return Cells(OVER_BUDGET, f"{count} {what} of {hp.n} distinct hyperplanes of rank {hp.rank} exceed "
                     f"max_cells = {max_cells}; not enumerated", signs=np.zeros((0, hp.n), np.int8),
                     points=np.zeros((0, hp.d)), margins=np.zeros(0), n_lps=0, n_nnls=0, **base)
    found = _incremental(U, margin, max_cells)
    if found is None:
        return Cells(OVER_BUDGET, f"more than max_cells = {max_cells} cells (count {count} was wrong); stopped",
                     signs=np.zeros((0, hp.n), np.int8), points=np.zeros((0, hp.d)), margins=np.zeros(0), n_lps=0,
                     n_nnls=0, **dict(base, count=max_cells + 1, count_exact=False))
    signs, pts, margins, n_lps, n_nnls = found
    return Cells(COMPLETE, f"{len(signs)} cells of {hp.n} distinct hyperplanes (from {len(hp.group)} rows) of "
                 f"rank {hp.rank} ({n_nnls} cone projections, {n_lps} LPs)", signs=signs,
                 points=pts @ hp.basis.T, margins=margins, n_lps=n_lps, n_nnls=n_nnls, **base)


def _closure(U: np.ndarray, zero: frozenset, tol: float) -> tuple[frozenset, np.ndarray]:
    """The hyperplanes containing the flat ``{y : U_j . y = 0, j in zero}``, and its orthonormal basis."""
    q = U.shape[1]
    B = null_space(U[sorted(zero)], rcond=tol) if zero else np.eye(q)
    on = np.flatnonzero(np.linalg.norm(U @ B, axis=1) <= tol) if B.shape[1] else np.arange(len(U))
    return frozenset(on.tolist()) | zero, B


def enumerate_faces(rows, cell=None, max_faces: int = DEFAULT_MAX_FACES, tol: float = RANK_TOL,
                    margin: float = MARGIN) -> Faces:
    """Faces of the arrangement of ``rows`` (a :class:`Hyperplanes` or an (M, d) array), or of one cell.

    Args:
        cell: None for the whole face lattice (every face, from the cells down to the lineality
            space); or a cell's sign vector over the distinct hyperplanes (``Cells.signs[j]``) for the
            faces of its closure (the cell itself included).
        max_faces: stop once this many faces are found (status ``"over budget"``).

    Each flat (intersection of hyperplanes) is visited once; on it, the restricted arrangement's cells
    are the faces with that zero set (the whole lattice: :func:`enumerate_cells` machinery on the
    flat), or one LP decides whether the cell's face there is nonempty (one cell).
    """
    hp = rows if isinstance(rows, Hyperplanes) else group_hyperplanes(rows, tol)
    U = hp.reduced()
    n, q = U.shape
    if cell is not None:
        cell = np.asarray(cell, float).reshape(-1)
        if cell.shape != (n,) or not np.all(np.abs(cell) == 1):
            raise ValueError(f"`cell` must be a sign vector of {n} entries +-1 (Cells.signs[j]), got {cell}")
    signs, points, dims, n_lps, n_nnls = [], [], [], 0, 0
    start = _closure(U, frozenset(), tol)[0]
    todo, seen = [start], {start}
    status = COMPLETE
    while todo:
        zero = todo.pop()
        zero, B = _closure(U, zero, tol)
        free = np.array([j for j in range(n) if j not in zero], int)
        if cell is None:
            sub = group_hyperplanes(U[free] @ B, tol)
            got = _incremental(_unit_rows(sub.normals), margin, max_faces) if sub.n else \
                (np.zeros((1, 0), np.int8), np.zeros((1, B.shape[1])), None, 0, 0)
            if got is None:
                status = OVER_BUDGET
                break
            s_sub, pts, _, lps, projections = got
            n_lps += lps
            n_nnls += projections
            here = []
            for s, p in zip(s_sub, pts):
                tau = np.zeros(n, np.int8)
                tau[free] = sub.row_signs(s)
                here.append((tau, B @ p))
            children = [free[sub.group == g] for g in range(sub.n)]
        else:
            w, mw = _max_margin(U[free], cell[free], B) if free.size else (np.zeros(B.shape[1]), np.inf)
            n_lps += 1 if free.size else 0
            if not mw > margin:
                continue
            tau = np.zeros(n, np.int8)
            tau[free] = cell[free]
            here = [(tau, B @ w)]
            children = [[j] for j in free]
        for tau, p in here:
            signs.append(tau)
            points.append(hp.basis @ p)
            dims.append(hp.d - hp.rank + B.shape[1])
        if len(signs) > max_faces:
            status = OVER_BUDGET
            break
        for js in children:
            child = _closure(U, zero | frozenset(int(j) for j in js), tol)[0]
            if child not in seen:
                seen.add(child)
                todo.append(child)
    what = "the whole arrangement" if cell is None else "one cell"
    msg = (f"{len(signs)} faces of {what} ({n} distinct hyperplanes of rank {hp.rank}), {n_nnls} cone "
           f"projections, {n_lps} LPs"
           if status == COMPLETE else f"more than max_faces = {max_faces} faces of {what}; stopped")
    return Faces(status, msg, hp, np.array(signs, np.int8).reshape(-1, n), np.array(points).reshape(-1, hp.d),
                 np.array(dims, int), n_lps, n_nnls)
