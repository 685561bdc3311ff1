"""The dense ECQP solver: the reduced ``H`` formed once as tiles, the subspace basis by Householder
reflectors per block, ``lambda_min(Qww) > 2 F eig_tol`` proven by one tiled Cholesky factorisation
(DESIGN.md sections 3 step 4, 5)."""

from __future__ import annotations

import numpy as np

from .krylov import extreme_ritz
from .margins import FRAGILITY_FACTOR, Margins
from .reduced import Block, ReducedProblem
from .subspace import MinEig, spectral_norm
from .symmetric_tiles import SymmetricTiles, tile_bounds

__all__ = ["DenseSubspace"]

#: a tile holds whole constraint blocks, at least this many coordinates (and at least n / 32, so that
#: the tile-by-tile factorisation makes at most a few thousand BLAS calls)
TILE_TARGET = 64

#: ``H`` stays one square tile while its n^2 floats are at most this share of the data's: memory is no
#: concern there, and a failed factorisation of one tile is undone from its lower triangle
SQUARE_SHARE = 0.25

# at most this many refinement steps of a solve through the factor of Qww - tau I
_REFINE_STEPS = 30


class DenseSubspace:
    """The ECQP subspace of the dense reduced ``H``, certified by one Cholesky factorisation.

    Storage: ``H`` is held as the lower block triangle of tiles (:class:`SymmetricTiles`, about
    ``n^2 / 2`` floats), in coordinates where each constraint block is contiguous and inside one tile
    (the blocks in order, then the coordinates no block holds); as one square tile where that is small
    next to the data (``SQUARE_SHARE``).

    Basis: each block's constraint directions ``QE`` are rotated onto its first coordinates by
    Householder reflectors ``Q_b`` (block diagonal, so ``Q' H Q`` costs ``O(n)`` per reflector and
    column); ``Mw`` is ``Q`` without those columns, and ``Qww = Mw' H Mw`` is the rotated ``H`` without
    those rows and columns. They are decoupled in place (zero rows and columns, a positive diagonal),
    so the tiles hold everything.

    The ECQP asks only whether ``Qww > eig_tol`` (DESIGN.md section 3, step 4). A Cholesky factorisation
    ``R' R`` of ``A = Qww - tau I`` (``tau = 2 F eig_tol + slack``, ``F`` the fragility factor) that completes
    is exact for some ``A + E`` with ``|E| <= g |R'| |R|`` entrywise, ``g = (n + 1) eps / (1 - (n + 1) eps)``
    (Higham, Accuracy and Stability, Theorem 10.3; the tiles compute the same inner products in another
    order), hence ``|E|_2 <= g |R|_F^2``; ``A + E`` being positive
    definite, ``lambda_min(Qww) > tau - g |R|_F^2``. ``slack`` is ``2 g`` times the trace of ``A``, and the
    certificate holds only once ``g |R|_F^2 <= slack`` is checked on the computed factor: then
    ``lambda_min(Qww) > 2 F eig_tol`` is proven for the computed ``Qww`` (the rounding of forming ``H`` and
    the rotations, common to every method, aside), and no tolerance scale in ``[1/F, F]`` changes the
    decision. The reported value is then ``tau + 1 / theta`` with ``theta`` the largest Ritz value of
    ``(Qww - tau I)^-1`` (Lanczos through the factor, run to convergence): an upper bound on
    ``lambda_min``, as accurate as ``eigh``. Solves with ``Qww`` refine through the same factor. The
    factorisation overwrites the tiles (of a single tile, only its upper triangle): when it fails (an
    eigenvalue within ``2 F eig_tol`` of zero or below), ``H`` is formed again as one tile (or restored
    from the lower triangle) and ``eigh`` of ``Qww`` decides; its spectrum serves every method afterwards.
    """

    name = "dense"

    def __init__(self, prob: ReducedProblem, blocks: list[Block]):
        self.prob = prob
        self.n = n = prob.n
        blocks = [b for b in blocks if b.idx.size]
        order = np.concatenate([b.idx for b in blocks] + [np.zeros(0, int)]).astype(int)
        if order.size != np.unique(order).size:
            raise ValueError("constraint blocks overlap")
        rest = np.setdiff1d(np.arange(n), order)
        self._order = np.concatenate([order, rest])  # storage coordinate -> position in keep
        starts = np.cumsum([0] + [b.idx.size for b in blocks])
        self._reflectors = [(int(s), *_householder(b.QE)) for s, b in zip(starts, blocks) if b.QE.shape[1]]
        constrained = np.zeros(n, bool)
        for s, V, _ in self._reflectors:
            constrained[s: s + V.shape[1]] = True
        self._c = np.flatnonzero(constrained)
        self._w = np.flatnonzero(~constrained)
        self.dim = int(self._w.size)
        self._bounds = tile_bounds([b.idx.size for b in blocks], n, _tile_target(prob, n))
        self.tiles = self._form(self._bounds, norm=True)  # rotated, decoupled; a Cholesky factor once ``_shift`` is set
        self._diag = self.tiles.diagonal()
        # the constrained coordinates' pivot: positive, and of the scale of H (it enters the trace bound)
        self._pivot = self.hessian_norm if self.hessian_norm > 0 else 1.0
        self._shift = None
        self._spectrum = None  # (ew, Uw) of Qww once eigh has run
        self._certified = None  # (eig_tol, MinEig) of the last certificate

    @property
    def products(self) -> int:
        return self.prob.products

    def _form(self, bounds, norm: bool = False) -> SymmetricTiles:
        """The reduced ``H`` in storage coordinates, its blocks rotated and the constrained coordinates
        decoupled; with ``norm``, ``|H|_2`` (before the rotations) to ``hessian_norm``."""
        prob = self.prob
        S = prob.operator(prob.J_base).tiles(prob.keep[self._order], bounds)
        if norm:
            self.hessian_norm = spectral_norm(S.dense() if self.n <= 400 or S.count == 1 else S.operator())
        for s, V, beta in self._reflectors:
            views, idx = S.rows_and_columns(s, V.shape[0])
            for A in views:
                _reflect(A, idx, V, beta)
        S.zero(self._c)
        return S

    # ------------------------------------------------------------------ the basis Mw, block by block

    def _rotate(self, R: np.ndarray) -> np.ndarray:
        """``Q' R`` for ``R`` (n, b) given in the positions of ``keep``: in storage coordinates, the kept
        coordinates of ``Mw' R`` and zeros where constrained."""
        R = np.asarray(R, dtype=float).reshape(self.n, -1)[self._order]  # a copy (fancy indexing)
        for s, V, beta in self._reflectors:
            _reflect(R, np.arange(s, s + V.shape[0]), V, beta)
        R[self._c] = 0.0
        return R

    def _to_w(self, R: np.ndarray) -> np.ndarray:
        """``Mw' R``, (dim, b)."""
        return self._rotate(R)[self._w]

    def _from_w(self, x: np.ndarray, full: bool = False) -> np.ndarray:
        """``Mw x`` (in the positions of ``keep``) for ``x`` (dim,) or (dim, b); with ``full``, ``x`` is
        given in all n storage coordinates."""
        x = np.asarray(x, float)
        flat = np.array(x).reshape(self.n, -1) if full else np.zeros((self.n,) + x.shape[1:]).reshape(self.n, -1)
        if not full:
            flat[self._w] = x.reshape(self._w.size, -1)
        for s, V, beta in reversed(self._reflectors):
            _reflect(flat, np.arange(s, s + V.shape[0]), V, beta, backwards=True)
        out = np.empty_like(flat)
        out[self._order] = flat
        return out.reshape((self.n,) + x.shape[1:])

    # ------------------------------------------------------------ the factorisation and the spectrum

    def _factor(self, shift: float) -> bool:
        """Cholesky of the rotated ``H - shift I`` (constrained coordinates decoupled with a positive
        pivot), in the tiles. They hold ``H`` no longer afterwards, whether it completes or not."""
        d = self._diag - shift
        d[self._c] = self._pivot
        self.tiles.set_diagonal(d)
        self._shift = shift
        return self.tiles.cholesky()

    def _eigh(self) -> tuple[np.ndarray, np.ndarray]:
        """``eigh(Qww)``, computed once; no n x n array is kept. A factorisation of several tiles has
        overwritten ``H``, which is then formed again as one tile."""
        if self._spectrum is None:
            S, self.tiles = self.tiles, None
            if self._shift is not None and not S.unfactor(self._diag):
                del S
                S = self._form([0, self.n])
            Qww = S.dense()[np.ix_(self._w, self._w)]
            del S
            self._spectrum = np.linalg.eigh(Qww) if Qww.size else (np.zeros(0), np.zeros((0, 0)))
        return self._spectrum

    def _certify(self, eig_tol: float) -> MinEig | None:
        """``lambda_min(Qww) > 2 F eig_tol`` proven by a Cholesky factorisation (class docstring), with the
        value from the factor; None when it fails, when ``eigh`` has already run, or for another ``eig_tol``
        once the tiles hold a factor (``H`` is gone; a subspace serves one tolerance)."""
        if self._certified is not None and self._certified[0] == eig_tol:
            return self._certified[1]
        if self._spectrum is not None or self._shift is not None:
            return None
        n = self.n
        u = (n + 1) * np.finfo(float).eps
        g = u / (1.0 - u)
        floor = 2.0 * FRAGILITY_FACTOR * eig_tol
        trace = float(np.sum(self._diag[self._w]) - floor * self._w.size + self._pivot * self._c.size)
        tau = floor + 2.0 * g * max(trace, 0.0)
        fro2 = self.tiles.factor_sq() if self._factor(tau) else np.inf
        if g * fro2 > tau - floor:  # not factorised, or a rounding bound above the slack
            return None
        v = np.zeros(n)
        v[self._w] = np.random.default_rng(0).standard_normal(self._w.size)
        ritz = extreme_ritz(lambda x: self.tiles.solve(x[:, None])[:, 0], v, 1e-12, 200)
        value = tau + 1.0 / ritz.value
        # converged: an error at the level of eigh's rounding; otherwise only the proven interval
        accuracy = 0.0 if ritz.converged else value - floor
        eig = MinEig(value, self._from_w(ritz.vector, full=True), accuracy,
                     f"dense (Cholesky of Qww - tau I, tau = {tau:.3g}: lambda_min > {floor:.3g} proven, "
                     f"rounding bound {g * fro2:.2g})")
        self._certified = (eig_tol, eig)
        return eig

    def _solve_certified(self, B: np.ndarray, eig: MinEig) -> np.ndarray | None:
        """``Qww^-1 B`` (storage coordinates, zero where constrained) through the factor of
        ``A = Qww - tau I``: ``x <- x + A^-1 (B - (A + tau I) x)``, whose error shrinks by
        ``tau / lambda_min(A)`` a step. None once ``eigh`` has run (the factor is gone), unless the
        certificate's Ritz value ``eig`` has converged and puts that ratio at 1/4 or less, or when the steps
        stop shrinking above ``1e-8 |x|`` (per column; a direct solve's rounding at a condition number of
        ``1e8``)."""
        tau = self._shift
        if self._spectrum is not None or eig.accuracy != 0.0 or eig.value - tau <= 4.0 * tau:
            return None
        S, eps = self.tiles, np.finfo(float).eps
        x = S.solve(B)
        prev = np.full(x.shape[1], np.inf)
        for _ in range(_REFINE_STEPS):
            res = B - S.factor_times(x) - tau * x
            res[self._c] = 0.0
            dx = S.solve(res)
            x += dx
            size, scale = np.max(np.abs(dx), axis=0), np.max(np.abs(x), axis=0)
            if np.all(size <= 4.0 * eps * scale):
                return x
            if np.any(size >= 0.5 * prev):  # no longer shrinking: the rounding level, or no convergence
                return x if np.all(size <= 1e-8 * scale) else None
            prev = size
        return None

    # ------------------------------------------------------------------------ the solver interface

    def min_eig(self, eig_tol: float) -> MinEig:
        if not self.dim:
            return MinEig(None, None, 0.0, "dense")
        eig = self._certify(eig_tol)
        if eig is not None:
            return eig
        ew, Uw = self._eigh()
        return MinEig(float(ew[0]), self._from_w(Uw[:, 0]), 0.0, "dense (eigh)")

    def _null(self, eig_tol: float, margins: Margins) -> np.ndarray:
        """Which eigenvalues of ``Qww`` count as zero."""
        ew = self._eigh()[0]
        return margins.vector_abs_le("ICQP: eigenvalues of Qww", ew, eig_tol)

    def solve(self, R: np.ndarray, eig_tol: float, margins: Margins) -> np.ndarray:
        if not self.dim:
            return np.zeros((self.n, np.shape(R)[1]))
        eig = self._certify(eig_tol)
        if eig is not None:
            # every eigenvalue is above 2 F eig_tol: the pseudo-inverse is the inverse
            margins.add("ICQP: eigenvalues of Qww", eig.value, eig_tol, eig.accuracy)
            x = self._solve_certified(self._rotate(R), eig)
            if x is not None:
                return self._from_w(x, full=True)
        self._null(eig_tol, margins)
        ew, Uw = self._eigh()
        pos = ew > eig_tol
        Qww_pinv = (Uw[:, pos] / ew[pos]) @ Uw[:, pos].T
        return self._from_w(Qww_pinv @ self._to_w(R))

    def unbounded_direction(self, My, HMy, Qyy, eig_tol, margins: Margins):
        """y = e_j and w = -alpha n0 with n0 = the coupling G_j inside the (numerical) null space of Qww.

        Along it the form is ``Qyy_jj - 2 alpha |G_j|^2 + alpha^2 n0' Qww n0``: unbounded below when
        the null eigenvalues are truly zero, and otherwise negative only if ``Qyy_jj < |G_j|^4 /
        n0' Qww n0`` (its value at the best ``alpha``); near-null eigenvalues within the tolerance
        are thus never mistaken for an unbounded direction. A certified ``Qww > 2 F eig_tol`` has no
        null space."""
        if not self.dim:
            return None
        eig = self._certify(eig_tol)
        if eig is not None:
            margins.add("ICQP: eigenvalues of Qww", eig.value, eig_tol, eig.accuracy)
            return None
        null = self._null(eig_tol, margins)
        ew, Uw = self._eigh()
        G = Uw[:, null].T @ self._to_w(HMy)
        lam = ew[null]
        lam = np.where(np.abs(lam) <= 1e-12 * self.hessian_norm, 0.0, lam)  # rounding noise is zero
        for j in np.argsort(-np.linalg.norm(G, axis=0)):
            g2 = float(G[:, j] @ G[:, j])
            if margins.at_most("ICQP: coupling to null(Qww)", np.sqrt(g2), eig_tol):
                break
            quad = float(lam @ G[:, j] ** 2)
            if quad > 0 and not margins.below("ICQP: value along the coupling", Qyy[j, j] - g2**2 / quad, eig_tol):
                continue
            alpha = g2 / quad if quad > 0 else (abs(Qyy[j, j]) + 1.0) / g2
            return My[:, j] - alpha * self._from_w(Uw[:, null] @ G[:, j])
        return None


def _tile_target(prob: ReducedProblem, n: int) -> int:
    """Coordinates a tile should hold: ``n`` (one square) unless ``H`` is formed from the data on the
    host and its square would exceed ``SQUARE_SHARE`` of the data's ``m (dx + 1)`` floats."""
    if prob.backend != "numpy" or n * n <= SQUARE_SHARE * prob.pt.m * (prob.pt.net.dx + 1):
        return n
    return max(TILE_TARGET, n // 32)


def _householder(QE: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Householder vectors ``V`` (s x r, column j zero above row j) and ``beta`` (r) with
    ``P_r ... P_1 QE = [R; 0]``, ``P_j = I - beta_j v_j v_j'``: ``Q = P_1 ... P_r`` has the span of ``QE``
    in its first r columns and an orthonormal basis of its complement in the others."""
    A = np.array(QE, dtype=float)
    s, r = A.shape
    V, beta = np.zeros((s, r)), np.zeros(r)
    for j in range(r):
        x = A[j:, j]
        nx = np.linalg.norm(x)
        v = np.array(x)
        v[0] += (1.0 if x[0] >= 0 else -1.0) * nx
        vv = float(v @ v)
        if vv == 0.0:  # a zero column (QE is orthonormal, so only after rounding): nothing to reflect
            continue
        V[j:, j], beta[j] = v, 2.0 / vv
        A[j:] -= np.outer(beta[j] * v, v @ A[j:])
    return V, beta


def _reflect(A: np.ndarray, idx: np.ndarray, V: np.ndarray, beta: np.ndarray, backwards: bool = False) -> None:
    """Rows ``idx`` of ``A`` (in place) times ``Q' = P_r ... P_1``, or with ``backwards`` times ``Q = P_1 ... P_r``;
    a few columns at a time, so the temporaries stay at ``2^16`` floats whatever the width of ``A``."""
    order = list(range(V.shape[1] - 1, -1, -1) if backwards else range(V.shape[1]))
    width = max(1, (1 << 16) // max(1, idx.size))
    for c0 in range(0, A.shape[1], width):
        cols = slice(c0, c0 + width)
        rows = A[idx, cols]
        for j in order:
            if beta[j]:
                rows -= np.outer(beta[j] * V[:, j], V[:, j] @ rows)
        A[idx, cols] = rows

