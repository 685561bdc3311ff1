"""A symmetric matrix held as its lower block triangle of tiles, and its Cholesky factor in the same
tiles (DESIGN.md section 5).

The dense ECQP solver's reduced ``H`` (``n x n``, ``n`` up to ``max_dense_params``) is the largest array
of a dense check; at the paper's widths it is as large as the data itself. Held as tiles ``T[I][J]``
for ``J <= I`` it takes ``(n^2 + sum_I b_I^2) / 2`` floats instead of ``n^2``, and a tile-by-tile
factorisation needs BLAS work buffers of one tile's size only. Diagonal tiles are full squares: a
block of rows and columns inside one tile can be rotated in place.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SymmetricTiles", "tile_bounds"]


def tile_bounds(sizes: list[int], n: int, target: int) -> np.ndarray:
    """Tile boundaries over ``n`` coordinates whose first ``sum(sizes)`` come in groups that must not
    be split (``sizes``, in order): consecutive groups are joined until a tile holds at least ``target``
    coordinates; the remaining coordinates are cut into tiles of ``target``. A last remainder shorter than
    ``target`` joins the tile before it."""
    bounds, start, at = [0], 0, 0
    for s in sizes:
        at += s
        if at - start >= target:
            bounds.append(at)
            start = at
    for cut in range(start + target, n, target):
        if cut > bounds[-1]:
            bounds.append(cut)
    if bounds[-1] != n:
        if len(bounds) > 1 and n - bounds[-1] < target:
            bounds[-1] = n
        else:
            bounds.append(n)
    return np.asarray(bounds)


def _as_index(p: np.ndarray):
    """``p`` as a slice when it is a contiguous increasing run (a view, no fancy indexing)."""
    if p.size and p[-1] - p[0] == p.size - 1 and (p.size < 3 or np.all(np.diff(p) == 1)):
        return slice(int(p[0]), int(p[-1]) + 1)
    return p


class SymmetricTiles:
    """The lower block triangle of a symmetric ``n x n`` matrix: ``tiles[I][J]`` (``J <= I``) holds rows
    ``bounds[I]:bounds[I+1]`` and columns ``bounds[J]:bounds[J+1]``.


    After :meth:`cholesky` succeeds the tiles hold ``L`` with ``L L' = A``: ``L_IJ`` in ``tiles[I][J]``
    (``J < I``) and ``L_II'`` in the upper triangle of ``tiles[I][I]`` (whose strictly lower triangle
    is then scratch). The matrix itself is gone: a caller that needs it again forms it again.
    """

    def __init__(self, bounds, tiles: list | None = None):
        """Zero tiles, unless ``tiles`` (of the shapes ``bounds`` gives) are handed over."""
        self.bounds = np.asarray(bounds, dtype=int)
        self.n = int(self.bounds[-1])
        sizes = np.diff(self.bounds)
        self.tiles = tiles if tiles is not None else \
            [[np.zeros((sizes[i], sizes[j])) for j in range(i + 1)] for i in range(sizes.size)]
        self.factored = False

    @classmethod
    def of_dense(cls, H: np.ndarray, bounds=None) -> "SymmetricTiles":
        """The tiles of a symmetric array ``H`` (``H`` itself, not a copy, when that is the one tile)."""
        n = H.shape[0]
        if bounds is None or len(bounds) == 2:
            return cls([0, n], [[np.ascontiguousarray(H, dtype=float)]])
        S = cls(bounds)
        for i in range(S.count):
            for j in range(i + 1):
                S.tiles[i][j][...] = H[S._span(i), S._span(j)]
        return S

    @property
    def count(self) -> int:
        return len(self.tiles)

    def _span(self, i: int) -> slice:
        return slice(int(self.bounds[i]), int(self.bounds[i + 1]))

    def nbytes(self) -> int:
        return sum(t.nbytes for row in self.tiles for t in row)

    # ------------------------------------------------------------------------ formation

    def route(self, p) -> list[tuple[int, object, object]]:
        """Where the coordinates ``p`` (an array or slice) go: ``(tile, which of p, local coordinates)`` per
        tile they reach, slices where contiguous."""
        c = np.arange(self.n)[p]
        if self.count == 1:
            return [(0, slice(None), _as_index(c))]
        tile = np.searchsorted(self.bounds, c, side="right") - 1
        out = []
        for t in np.unique(tile):
            sel = np.flatnonzero(tile == t)
            out.append((int(t), _as_index(sel), _as_index(c[sel] - self.bounds[t])))
        return out

    def add(self, rows, cols, blk: np.ndarray, symmetric: bool) -> None:
        """``H[rows, cols] += blk`` for routes ``rows``, ``cols`` (:meth:`route`). ``symmetric``: a
        diagonal block (``rows`` and ``cols`` the same coordinates, ``blk`` symmetric), of which the
        storage-lower entries are taken; otherwise ``rows`` and ``cols`` are disjoint and ``blk'`` is
        added at ``H[cols, rows]`` too. Diagonal tiles receive both sides; :meth:`finish` copies
        their lower triangle over the upper one."""
        for tr, rs, rl in rows:
            for tc, cs, cl in cols:
                if tr < tc and symmetric:
                    continue
                sub = blk[rs][:, cs]
                if tr > tc:
                    _add_at(self.tiles[tr][tc], rl, cl, sub)
                elif tr < tc:
                    _add_at(self.tiles[tc][tr], cl, rl, sub.T)
                else:
                    D = self.tiles[tr][tr]
                    _add_at(D, rl, cl, sub)
                    if not symmetric:
                        _add_at(D, cl, rl, sub.T)

    def finish(self, lam: float = 0.0) -> None:
        """Each diagonal tile's upper triangle from its lower one (an exact copy), and ``+ lam I``."""
        for i in range(self.count):
            D = self.tiles[i][i]
            _mirror_lower(D)
            if lam:
                D[np.arange(D.shape[0]), np.arange(D.shape[0])] += lam

    def unfactor(self, diagonal: np.ndarray) -> bool:
        """The matrix again after :meth:`cholesky` of a single tile, completed or not: that leaves the
        strictly lower triangle alone, so the matrix is that triangle mirrored, with ``diagonal``.
        False (nothing done) with several tiles, whose factor has overwritten the matrix."""
        if self.count != 1:
            return False
        _mirror_lower(self.tiles[0][0])
        self.set_diagonal(diagonal)
        self.factored = False
        return True

    # ------------------------------------------------------------------- the matrix, in place

    def diagonal(self) -> np.ndarray:
        return np.concatenate([np.diagonal(self.tiles[i][i]) for i in range(self.count)])

    def set_diagonal(self, d: np.ndarray) -> None:
        for i in range(self.count):
            np.fill_diagonal(self.tiles[i][i], d[self._span(i)])

    def _locate(self, start: int, size: int) -> tuple[int, np.ndarray]:
        t = int(np.searchsorted(self.bounds, start, side="right") - 1)
        if start + size > self.bounds[t + 1]:
            raise ValueError(f"coordinates {start}..{start + size} cross a tile boundary")
        lo = start - int(self.bounds[t])
        return t, np.arange(lo, lo + size)

    def rows_and_columns(self, start: int, size: int):
        """The views holding rows ``start:start+size`` (as rows of each view): the tiles left of the
        diagonal, the diagonal tile and its transpose, and the transposes of the tiles below it."""
        t, idx = self._locate(start, size)
        views = [self.tiles[t][j] for j in range(t)] + [self.tiles[t][t], self.tiles[t][t].T]
        views += [self.tiles[i][t].T for i in range(t + 1, self.count)]
        return views, idx

    def zero(self, coords: np.ndarray) -> None:
        """Rows and columns ``coords`` (storage) set to zero."""
        for c in np.asarray(coords, dtype=int):
            views, idx = self.rows_and_columns(int(c), 1)
            for V in views:
                V[idx] = 0.0

    def matmat(self, X: np.ndarray) -> np.ndarray:
        """``H X`` for ``X`` (n, k) in storage coordinates (before :meth:`cholesky`)."""
        Y = np.zeros_like(X)
        for i in range(self.count):
            si = self._span(i)
            for j in range(i):
                sj = self._span(j)
                Y[si] += self.tiles[i][j] @ X[sj]
                Y[sj] += self.tiles[i][j].T @ X[si]
            Y[si] += self.tiles[i][i] @ X[si]
        return Y

    def operator(self):
        """:meth:`matmat` as a SciPy ``LinearOperator``."""
        from scipy.sparse.linalg import LinearOperator

        return LinearOperator((self.n, self.n), matvec=lambda x: self.matmat(np.reshape(x, (self.n, -1)))[:, 0],
                              matmat=self.matmat, dtype=float)

    def dense(self) -> np.ndarray:
        """The whole matrix (the single tile itself when there is one)."""
        if self.count == 1:
            return self.tiles[0][0]
        H = np.empty((self.n, self.n))
        for i in range(self.count):
            for j in range(i + 1):
                H[self._span(i), self._span(j)] = self.tiles[i][j]
                H[self._span(j), self._span(i)] = self.tiles[i][j].T
        return H

    # ------------------------------------------------------------------ the Cholesky factor

    def cholesky(self) -> bool:
        """``A = L L'`` tile by tile (right-looking: ``dpotrf`` of a diagonal tile, ``dtrsm`` of the tiles
        below it, the trailing update by products). False when a pivot is not positive; the tiles are
        then neither ``A`` nor a factor. The same inner products as an unblocked factorisation, in
        another order, so the same backward error bound holds (DESIGN.md section 5)."""
        from scipy.linalg.blas import dtrsm
        from scipy.linalg.lapack import dpotrf

        T = self.tiles
        for k in range(self.count):
            D = T[k][k]
            c, info = dpotrf(D.T, lower=1, clean=0, overwrite_a=1)  # L_kk' to D's upper triangle
            if not np.shares_memory(c, D):  # f2py works in place on this Fortran-ordered view; if it ever copies
                D.T[...] = c
            if info != 0:
                return False
            for i in range(k + 1, self.count):  # L_ik = A_ik L_kk^-T, as L_kk (L_ik)' = (A_ik)'
                x = dtrsm(1.0, D.T, T[i][k].T, side=0, lower=1, trans_a=0, overwrite_b=1)
                if not np.shares_memory(x, T[i][k]):
                    T[i][k].T[...] = x
            for j in range(k + 1, self.count):
                Ljk = T[j][k]
                for i in range(j, self.count):
                    T[i][j] -= T[i][k] @ Ljk.T
        self.factored = True
        return True

    def factor_sq(self) -> float:
        """``|L|_F^2`` of the factor."""
        total = 0.0
        for i in range(self.count):
            D = self.tiles[i][i]
            total += float(sum(D[j, j:] @ D[j, j:] for j in range(D.shape[0])))
            total += float(sum(np.vdot(t, t) for t in self.tiles[i][:i]))
        return total

    def solve(self, B: np.ndarray) -> np.ndarray:
        """``(L L')^-1 B`` for ``B`` (n, k) in storage coordinates."""
        from scipy.linalg.blas import dtrsm

        Y = np.array(B, dtype=float)
        T = self.tiles
        for i in range(self.count):
            si = self._span(i)
            for j in range(i):
                Y[si] -= T[i][j] @ Y[self._span(j)]
            Y[si] = dtrsm(1.0, T[i][i].T, Y[si], side=0, lower=1, trans_a=0)
        for i in reversed(range(self.count)):
            si = self._span(i)
            for j in range(i + 1, self.count):
                Y[si] -= T[j][i].T @ Y[self._span(j)]
            Y[si] = dtrsm(1.0, T[i][i].T, Y[si], side=0, lower=1, trans_a=1)
        return Y

    def factor_times(self, X: np.ndarray) -> np.ndarray:
        """``L L' X`` for ``X`` (n, k) in storage coordinates (triangular products in place: no
        temporary of a diagonal tile's size)."""
        from scipy.linalg.blas import dtrmm

        T = self.tiles
        Z = np.zeros_like(X, dtype=float)
        for j in range(self.count):
            sj = self._span(j)
            Z[sj] = dtrmm(1.0, T[j][j].T, X[sj], side=0, lower=1, trans_a=1)
            for i in range(j + 1, self.count):
                Z[sj] += T[i][j].T @ X[self._span(i)]
        W = np.zeros_like(Z)
        for i in range(self.count):
            si = self._span(i)
            W[si] = dtrmm(1.0, T[i][i].T, Z[si], side=0, lower=1, trans_a=0)
            for j in range(i):
                W[si] += T[i][j] @ Z[self._span(j)]
        return W


def _mirror_lower(D: np.ndarray) -> None:
    """``D``'s upper triangle from its strictly lower one, in place, a block of rows at a time."""
    b = D.shape[0]
    for i0 in range(0, b, 64):  # temporaries of 64 x 64
        i1 = min(b, i0 + 64)
        blk = D[i0:i1, i0:i1]
        D[i0:i1, i0:i1] = np.tril(blk) + np.tril(blk, -1).T
        D[i0:i1, i1:] = D[i1:, i0:i1].T


def _add_at(A: np.ndarray, rows, cols, sub: np.ndarray) -> None:
    """``A[rows, cols] += sub`` for slices or index arrays."""
    if isinstance(rows, slice) and isinstance(cols, slice):
        A[rows, cols] += sub
    else:
        A[np.ix_(np.arange(A.shape[0])[rows], np.arange(A.shape[1])[cols])] += sub
