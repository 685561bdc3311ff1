"""The dense ECQP solver: the reduced ``H`` formed once, the subspace basis by Householder reflectors
per block, ``lambda_min(Qww) > 2 F eig_tol`` proven by one Cholesky factorisation (DESIGN.md sections
3 step 4, 5)."""

from __future__ import annotations

import numpy as np

from .krylov import extreme_ritz
from .margins import FRAGILITY_FACTOR, Margins
from .reduced import Block, ReducedProblem
from .subspace import MinEig, spectral_norm

__all__ = ["DenseSubspace"]


class DenseSubspace:
    """The ECQP subspace of the dense reduced ``H``, certified by one Cholesky factorisation.

    Basis: each block's constraint directions ``QE`` are rotated onto its first coordinates by
    Householder reflectors ``Q_b`` (block diagonal, so ``Q' H Q`` costs ``O(n)`` per reflector and
    column); ``Mw`` is ``Q`` without those columns, and ``Qww = Mw' H Mw`` is the rotated ``H`` without
    those rows and columns. They are decoupled in place (zero rows and columns, a positive diagonal),
    so one n x n array holds everything.

    The ECQP asks only whether ``Qww > eig_tol`` (DESIGN.md section 3, step 4). A Cholesky factorisation
    ``R' R`` of ``A = Qww - tau I`` (``tau = 2 F eig_tol + slack``, ``F`` the fragility factor) that completes
    is exact for some ``A + E`` with ``|E| <= g |R'| |R|`` entrywise, ``g = (n + 1) eps / (1 - (n + 1) eps)``
    (Higham, Accuracy and Stability, Theorem 10.3), hence ``|E|_2 <= g |R|_F^2``; ``A + E`` being positive
    definite, ``lambda_min(Qww) > tau - g |R|_F^2``. ``slack`` is ``2 g`` times the trace of ``A``, and the
    certificate holds only once ``g |R|_F^2 <= slack`` is checked on the computed factor: then
    ``lambda_min(Qww) > 2 F eig_tol`` is proven for the computed ``Qww`` (the rounding of forming ``H`` and
    the rotations, common to every method, aside), and no tolerance scale in ``[1/F, F]`` changes the
    decision. The reported value is then ``tau + 1 / theta`` with ``theta`` the largest Ritz value of
    ``(Qww - tau I)^-1`` (Lanczos through the factor, run to convergence): an upper bound on
    ``lambda_min``, as accurate as ``eigh``. When the factorisation fails (an eigenvalue within ``2 F eig_tol`` of zero or below),
    ``eigh`` of ``Qww`` decides, and its spectrum serves every method afterwards.
    """

    name = "dense"

    def __init__(self, prob: ReducedProblem, blocks: list[Block]):
        self.prob = prob
        H = prob.operator(prob.J_base).dense(prob.keep)
        self.hessian_norm = spectral_norm(H)
        self.n = n = H.shape[0]
        self._reflectors = [(b.idx, *_householder(b.QE)) for b in blocks if b.QE.shape[1]]
        constrained = np.zeros(n, bool)
        for idx, V, beta in self._reflectors:
            _reflect(H, idx, V, beta)
            _reflect(H.T, idx, V, beta)
            constrained[idx[: V.shape[1]]] = True
        H[constrained] = 0.0
        H[:, constrained] = 0.0
        self._c = np.flatnonzero(constrained)
        self._w = np.flatnonzero(~constrained)
        self.dim = int(self._w.size)
        self.H = H  # rotated, decoupled; its upper triangle holds a Cholesky factor while ``_shift`` is set
        self._diag = np.array(np.diagonal(H))
        # the constrained coordinates' pivot: positive, and of the scale of H (it enters the trace bound)
        self._pivot = self.hessian_norm if self.hessian_norm > 0 else 1.0
        self._shift = None
        self._spectrum = None  # (ew, Uw) of Qww once eigh has run
        self._certified = None  # (eig_tol, MinEig) of the last certificate

    @property
    def products(self) -> int:
        return self.prob.products

    # ------------------------------------------------------------------ the basis Mw, block by block

    def _rotate(self, R: np.ndarray) -> np.ndarray:
        """``Q' R`` for ``R`` (n, b): the kept coordinates of ``Mw' R`` and zeros where constrained."""
        R = np.array(R, dtype=float).reshape(self.n, -1)
        for idx, V, beta in self._reflectors:
            _reflect(R, idx, V, beta)
        R[self._c] = 0.0
        return R

    def _to_w(self, R: np.ndarray) -> np.ndarray:
        """``Mw' R``, (dim, b)."""
        return self._rotate(R)[self._w]

    def _from_w(self, x: np.ndarray, full: bool = False) -> np.ndarray:
        """``Mw x`` for ``x`` (dim,) or (dim, b); with ``full``, ``x`` is given in all n rotated coordinates."""
        x = np.asarray(x, float)
        out = np.array(x) if full else np.zeros((self.n,) + x.shape[1:])
        if not full:
            out[self._w] = x
        flat = out.reshape(self.n, -1)
        for idx, V, beta in reversed(self._reflectors):
            _reflect(flat, idx, V, beta, backwards=True)
        return out

    # ------------------------------------------------------------ the factorisation and the spectrum

    def _factor(self, shift: float) -> bool:
        """Cholesky of the rotated ``H - shift I`` (constrained coordinates decoupled with a positive
        pivot), in place: the factor goes to the upper triangle, the strictly lower one keeps ``H``."""
        from scipy.linalg.lapack import dpotrf

        self._restore()
        H = self.H
        d = self._diag - shift
        d[self._c] = self._pivot
        np.fill_diagonal(H, d)
        self._shift = shift
        c, info = dpotrf(H.T, lower=1, clean=0, overwrite_a=1)
        if not np.shares_memory(c, H):  # f2py works in place on this Fortran-ordered view; if it ever copies
            H.T[...] = c
        return info == 0

    def _restore(self) -> None:
        """``H`` again from its strictly lower triangle and the saved diagonal."""
        if self._shift is None:
            return
        H, n = self.H, self.n
        for i0 in range(0, n, 256):  # block rows: the strictly upper part from the strictly lower one
            i1 = min(n, i0 + 256)
            blk = H[i0:i1, i0:i1]
            H[i0:i1, i0:i1] = np.tril(blk, -1) + np.tril(blk, -1).T
            H[i0:i1, i1:] = H[i1:, i0:i1].T
        np.fill_diagonal(H, self._diag)
        self._shift = None

    def _solve_factored(self, B: np.ndarray) -> np.ndarray:
        """``(H - shift I)^-1 B`` through the factor in place."""
        from scipy.linalg.lapack import dpotrs

        X, info = dpotrs(self.H.T, B, lower=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"dpotrs failed (info {info})")
        return X

    def _eigh(self) -> tuple[np.ndarray, np.ndarray]:
        """``eigh(Qww)``, computed once; the n x n array is not needed afterwards."""
        if self._spectrum is None:
            self._restore()
            Qww = self.H[np.ix_(self._w, self._w)]
            self.H = None
            self._spectrum = np.linalg.eigh(Qww) if Qww.size else (np.zeros(0), np.zeros((0, 0)))
        return self._spectrum

    def _certify(self, eig_tol: float) -> MinEig | None:
        """``lambda_min(Qww) > 2 F eig_tol`` proven by a Cholesky factorisation (class docstring), with the
        value from the factor; None when it fails (or when ``eigh`` has already run)."""
        if self._certified is not None and self._certified[0] == eig_tol:
            return self._certified[1]
        if self._spectrum is not None:
            return None
        n = self.n
        u = (n + 1) * np.finfo(float).eps
        g = u / (1.0 - u)
        floor = 2.0 * FRAGILITY_FACTOR * eig_tol
        trace = float(np.sum(self._diag[self._w]) - floor * self._w.size + self._pivot * self._c.size)
        tau = floor + 2.0 * g * max(trace, 0.0)
        fro2 = _upper_sq(self.H) if self._factor(tau) else np.inf
        if g * fro2 > tau - floor:  # not factorised, or a rounding bound above the slack
            self._restore()
            return None
        v = np.zeros(n)
        v[self._w] = np.random.default_rng(0).standard_normal(self._w.size)
        ritz = extreme_ritz(lambda x: self._solve_factored(x[:, None])[:, 0], v, 1e-12, 200)
        value = tau + 1.0 / ritz.value
        # converged: an error at the level of eigh's rounding; otherwise only the proven interval
        accuracy = 0.0 if ritz.converged else value - floor
        eig = MinEig(value, self._from_w(ritz.vector, full=True), accuracy,
                     f"dense (Cholesky of Qww - tau I, tau = {tau:.3g}: lambda_min > {floor:.3g} proven, "
                     f"rounding bound {g * fro2:.2g})")
        self._certified = (eig_tol, eig)
        return eig

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
            if self._shift != 0.0 and not self._factor(0.0):
                raise np.linalg.LinAlgError("Qww lost definiteness between two factorisations")
            return self._from_w(self._solve_factored(self._rotate(R)), full=True)
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


def _upper_sq(H: np.ndarray) -> float:
    """``|R|_F^2`` of the factor in the upper triangle of ``H`` (row by row: no n x n temporary)."""
    return float(sum(H[j, j:] @ H[j, j:] for j in range(H.shape[0])))


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

