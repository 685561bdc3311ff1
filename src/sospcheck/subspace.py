"""Solvers on the ECQP subspace ``{theta : every constraint row of every block = 0}`` (DESIGN.md sections 3, 5).

With ``N`` a basis of ``null(A)`` and ``C = B N``, ``theta = N (C^+ y + W w)``, ``W`` a basis of
``null(C)``: the ECQP is the ``w`` block (all kinks held, ``y = 0``), the same for every sign choice.
A :class:`SubspaceSolver` gives its smallest eigenvalue ``lambda_min(Qww)``, solves with ``Qww^+``
(the Schur complement of each ICQP) and, when ``Qww`` is singular, a direction along which an ICQP's
form is unbounded below. Two implementations: :class:`DenseSubspace` (explicit basis, dense reduced
``H``) and :class:`ProjectedSubspace` (block-diagonal projector, ``H`` through products only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from scipy.linalg import null_space

from .margins import FRAGILITY_FACTOR, Margins
from .reduced import Block, ReducedProblem

__all__ = ["MinEig", "SubspaceSolver", "DenseSubspace", "ProjectedSubspace", "lanczos_min", "spectral_norm",
           "make_subspace"]


@dataclass(frozen=True)
class MinEig:
    """``lambda_min(Qww)`` (``value``) and a unit eigenvector in kept coordinates; both None when the
    subspace is ``{0}`` or the computation failed (``failed`` says why). ``accuracy``: a bound on the
    error of ``value`` valid for every tolerance scale in ``[1/10, 10]`` (its stopping tests scale with
    ``eig_tol``); ``detail`` says how it was computed."""

    value: float | None
    vector: np.ndarray | None
    accuracy: float = 0.0
    detail: str = ""
    failed: str | None = None


@runtime_checkable
class SubspaceSolver(Protocol):
    """The ECQP subspace of one reduced problem. Methods are independent of one another and of call order."""

    name: str  # "dense" or "matrix_free"
    dim: int  # dimension of the ECQP subspace
    hessian_norm: float  # |H|_2 of the reduced Hessian (the scale of ``eig_tol``)

    @property
    def products(self) -> int: ...

    def min_eig(self, eig_tol: float) -> MinEig: ...

    def solve(self, R: np.ndarray, eig_tol: float, margins: Margins) -> np.ndarray:
        """``Mw Qww^+ Mw' R``, ``Qww``'s eigenvalues within ``eig_tol`` of 0 treated as zero."""

    def unbounded_direction(self, My: np.ndarray, HMy: np.ndarray, Qyy: np.ndarray, eig_tol: float,
                            margins: Margins) -> np.ndarray | None:
        """A ``theta`` along which the ICQP with particular solutions ``My`` is unbounded below, or None."""


def spectral_norm(H: np.ndarray) -> float:
    """``|H|_2`` of a symmetric matrix."""
    if H.size == 0:
        return 0.0
    if H.shape[0] <= 400:
        return float(np.max(np.abs(np.linalg.eigvalsh(H))))
    from scipy.sparse.linalg import eigsh

    return float(abs(eigsh(H, k=1, which="LM", return_eigenvectors=False)[0]))


class DenseSubspace:
    """The ECQP subspace by an explicit orthonormal basis ``Mw`` and the dense reduced ``H``."""

    name = "dense"

    def __init__(self, prob: ReducedProblem, blocks: list[Block]):
        self.prob = prob
        n = prob.n
        self.H = prob.operator(prob.J_base).dense(prob.keep)
        self.hessian_norm = spectral_norm(self.H)
        cols = []
        in_block = np.zeros(n, bool)
        for b in blocks:
            in_block[b.idx] = True
            Nk = null_space(b.QE.T) if b.QE.shape[1] else np.eye(b.idx.size)
            C = np.zeros((n, Nk.shape[1]))
            C[b.idx] = Nk
            cols.append(C)
        free = np.flatnonzero(~in_block)
        F = np.zeros((n, free.size))
        F[free, np.arange(free.size)] = 1.0
        self.Mw = np.hstack(cols + [F]) if cols or free.size else np.zeros((n, 0))
        self.dim = int(self.Mw.shape[1])
        Qww = self.Mw.T @ self.H @ self.Mw
        # the spectrum of Qww serves every method; computed once, here
        self.ew, self.Uw = np.linalg.eigh(Qww) if Qww.size else (np.zeros(0), np.zeros((0, 0)))

    @property
    def products(self) -> int:
        return self.prob.products

    def min_eig(self, eig_tol: float) -> MinEig:
        if not self.ew.size:
            return MinEig(None, None, 0.0, "dense")
        return MinEig(float(self.ew[0]), self.Mw @ self.Uw[:, 0], 0.0, "dense")

    def _null(self, eig_tol: float, margins: Margins) -> np.ndarray:
        """Which eigenvalues of ``Qww`` count as zero."""
        return margins.vector_abs_le("ICQP: eigenvalues of Qww", self.ew, eig_tol)

    def solve(self, R: np.ndarray, eig_tol: float, margins: Margins) -> np.ndarray:
        self._null(eig_tol, margins)
        pos = self.ew > eig_tol
        Qww_pinv = (self.Uw[:, pos] / self.ew[pos]) @ self.Uw[:, pos].T
        return self.Mw @ (Qww_pinv @ (self.Mw.T @ R))

    def unbounded_direction(self, My, HMy, Qyy, eig_tol, margins: Margins):
        """y = e_j and w = -alpha n0 with n0 = the coupling G_j inside the (numerical) null space of Qww.

        Along it the form is ``Qyy_jj - 2 alpha |G_j|^2 + alpha^2 n0' Qww n0``: unbounded below when
        the null eigenvalues are truly zero, and otherwise negative only if ``Qyy_jj < |G_j|^4 /
        n0' Qww n0`` (its value at the best ``alpha``); near-null eigenvalues within the tolerance
        are thus never mistaken for an unbounded direction."""
        null = self._null(eig_tol, margins)
        G = self.Uw[:, null].T @ (self.Mw.T @ HMy)
        lam = self.ew[null]
        lam = np.where(np.abs(lam) <= 1e-12 * self.hessian_norm, 0.0, lam)  # rounding noise is zero
        for j in np.argsort(-np.linalg.norm(G, axis=0)):
            g2 = float(G[:, j] @ G[:, j])
            if margins.at_most("ICQP: coupling to null(Qww)", np.sqrt(g2), eig_tol):
                break
            quad = float(lam @ G[:, j] ** 2)
            if quad > 0 and not margins.below("ICQP: value along the coupling", Qyy[j, j] - g2**2 / quad, eig_tol):
                continue
            alpha = g2 / quad if quad > 0 else (abs(Qyy[j, j]) + 1.0) / g2
            return My[:, j] - alpha * (self.Mw @ (self.Uw[:, null] @ G[:, j]))
        return None


def lanczos_min(apply, v0: np.ndarray, eig_tol: float, max_steps: int):
    """Lanczos with full reorthogonalisation for the smallest eigenvalue, with two early exits.

    ``("negative", rq, y)``: the first Ritz vector with ``y' A y < -eig_tol |y|^2``, checked with one
    extra product (a certificate long before the eigenvalue converges). ``("converged", theta, y)``:
    the smallest Ritz pair with residual ``beta_j |s_j| <= eig_tol / 10`` (or an invariant Krylov
    space), so an eigenvalue lies within ``eig_tol / 10`` of ``theta``. None after ``max_steps``.
    """
    Q = np.empty((max_steps, v0.size))
    Q[0] = v0 / np.linalg.norm(v0)
    alphas, betas = [], []
    for j in range(max_steps):
        w = apply(Q[j])
        alphas.append(float(Q[j] @ w))
        Qm = Q[: j + 1]
        w -= Qm.T @ (Qm @ w)
        w -= Qm.T @ (Qm @ w)  # twice is enough (Kahan)
        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, S = np.linalg.eigh(T)
        if theta[0] < -eig_tol:
            y = Qm.T @ S[:, 0]
            y /= np.linalg.norm(y)
            rq = float(y @ apply(y))
            if rq < -eig_tol:
                return "negative", rq, y
        beta = float(np.linalg.norm(w))
        invariant = beta <= 1e-14 * max(1.0, abs(theta).max())
        if invariant or beta * abs(S[-1, 0]) <= 0.1 * eig_tol:
            y = Qm.T @ S[:, 0]
            return "converged", float(theta[0]), y / np.linalg.norm(y)
        if j + 1 == max_steps:
            break
        betas.append(beta)
        Q[j + 1] = w / beta
    return None


# a value accurate to eig_tol / 10 at every tolerance scale is known, over the scales the fragility
# probe tries, only to within that at this scale plus that at the largest one
_SCALED_ACCURACY = 0.1 * (1 + FRAGILITY_FACTOR)


class ProjectedSubspace:
    """The ECQP subspace by its block-diagonal projector; ``H`` only through products (DESIGN.md section 5).

    The minimum eigenvalue comes from Lanczos on ``P H P + sigma (I - P)``: the shift
    ``sigma > |H|`` pushes the constrained directions above the spectrum of interest. A short
    Lanczos run with early exit settles the saddle case: any Ritz vector whose (exactly computed)
    Rayleigh quotient is below ``-eig_tol`` is already a certificate, long before the eigenvalue
    converges. Otherwise ARPACK computes ``lambda_min`` to high accuracy.
    ``Qww`` solves use MINRES on the same operator; when ``Qww`` is singular its residual is the
    right-hand side's component in the null space (the unbounded case of the ICQP).
    """

    name = "matrix_free"

    def __init__(self, prob: ReducedProblem, blocks: list[Block], progress=None):
        from scipy.sparse.linalg import LinearOperator, eigsh

        self.prob, self.blocks, self.progress = prob, blocks, progress
        n = prob.n
        self.n = n
        self.dim = int(n - sum(b.QE.shape[1] for b in blocks))
        H = LinearOperator((n, n), matvec=self._h, matmat=self._h, dtype=float)
        self.hessian_norm = float(abs(eigsh(H, k=1, which="LM", tol=1e-3, return_eigenvectors=False)[0])) if n > 1 \
            else float(abs(self._h(np.ones((1, 1)))[0, 0]))
        self.sigma = 1.05 * self.hessian_norm + 1e-300
        self.op = LinearOperator((n, n), matvec=self.apply, rmatvec=self.apply, matmat=self.apply, dtype=float)
        self.n_products = 0  # products with the projected operator (what the Lanczos detail reports)
        self._solved = (None, None, None)  # the last right-hand sides, solutions and residuals

    @property
    def products(self) -> int:
        return self.prob.products

    def _h(self, x):
        x = x.reshape(self.n, -1)
        return self.prob.apply(self.prob.J_base, x)

    def project(self, x) -> np.ndarray:
        """``P x``: the component in the ECQP subspace, (n, b)."""
        x = np.array(x, dtype=float).reshape(self.n, -1)
        for b in self.blocks:
            if b.QE.shape[1]:
                x[b.idx] -= b.QE @ (b.QE.T @ x[b.idx])
        return x

    def apply(self, x) -> np.ndarray:
        """``(P H P + sigma (I - P)) x``, (n, b)."""
        x = np.asarray(x, float).reshape(self.n, -1)
        px = self.project(x)
        self.n_products += x.shape[1]
        if self.progress is not None:
            self.progress("Hessian-vector products (passes over the data)", self.n_products, None)
        return self.project(self._h(px)) + self.sigma * (x - px)

    def min_eig(self, eig_tol: float) -> MinEig:
        if self.dim == 0:
            return MinEig(None, None, 0.0, "matrix-free (Lanczos)")
        v = self.project(np.random.default_rng(0).standard_normal((self.n, 1)))[:, 0]
        if self.n <= 2:  # below ARPACK's minimum size
            M = self.apply(np.eye(self.n))
            w, U = np.linalg.eigh(0.5 * (M + M.T))
            return self._report(float(w[0]), U[:, 0], 0.0)
        found = lanczos_min(lambda x: self.apply(x)[:, 0], v, eig_tol,
                            max_steps=min(self.n, 300, (1 << 27) // self.n + 2))
        if found is not None:
            # a negative Rayleigh quotient is exact; a converged one is accurate to eig_tol / 10
            return self._report(found[1], found[2], _SCALED_ACCURACY * eig_tol if found[0] == "converged" else 0.0)
        return self._arpack_min(v, eig_tol)

    def _arpack_min(self, v: np.ndarray, eig_tol: float) -> MinEig:
        """ARPACK on the operator shifted by ``c = |H|``: its stopping test is relative to the Ritz value,
        unattainable for ``lambda_min ~ 0`` unshifted; shifted, the error is ``~ tol * c``, absolute. A
        coarse run decides a ``lambda_min`` far from ``+-eig_tol``; one near them is refined."""
        from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

        c = self.hessian_norm or 1.0
        shifted = LinearOperator((self.n, self.n), matvec=lambda x: self.apply(x)[:, 0] + c * np.ravel(x), dtype=float)
        for tol in (1e-6, min(1e-6, 0.05 * eig_tol / c)):  # (a random start vector: an eigenvector would stall it)
            try:
                lam, vec = eigsh(shifted, k=1, which="SA", v0=v, tol=tol, maxiter=max(1000, 20 * self.n))
            except ArpackNoConvergence as exc:
                return MinEig(None, None, 0.0, "matrix-free (Lanczos)", f"Lanczos did not converge ({exc})")
            lam = float(lam[0]) - c
            if min(abs(lam - eig_tol), abs(lam + eig_tol)) > 2 * tol * c:
                break
        u = self.project(vec)[:, 0]
        return self._report(lam, u / np.linalg.norm(u), 2 * tol * c + _SCALED_ACCURACY * eig_tol)

    def _report(self, lam: float, v: np.ndarray, accuracy: float) -> MinEig:
        detail = (f"matrix-free (Lanczos, {self.n_products} products, residual "
                  f"{np.linalg.norm(self.apply(v)[:, 0] - lam * v):.2g})")
        return MinEig(lam, v, accuracy, detail)

    def _solve_lsq(self, R):
        """Least-squares solutions of ``Qww x = Mw' R`` (``Qww`` may be singular) and the residuals,
        which are the components of the right-hand sides in ``null(Qww)``. MINRES first (fast when
        ``Qww`` is definite), LSMR to finish where MINRES leaves a residual that is not in the null
        space (it may stop short on singular, inconsistent systems). The last answer is kept: the
        ICQP asks for the same right-hand sides twice (unbounded direction, then Schur complement)."""
        from scipy.sparse.linalg import lsmr, minres

        if self._solved[0] is R:
            return self._solved[1], self._solved[2]
        X, res = np.zeros_like(R), np.zeros_like(R)
        for j in range(R.shape[1]):
            b = self.project(R[:, j])[:, 0]
            x = self.project(minres(self.op, b, rtol=1e-12, maxiter=10 * self.n)[0])[:, 0]
            rj = b - self.apply(x)[:, 0]
            if np.linalg.norm(self.apply(rj)) > 1e-10 * self.sigma * np.linalg.norm(rj):
                x = self.project(lsmr(self.op, b, atol=1e-15, btol=1e-15, maxiter=20 * self.n)[0])[:, 0]
                rj = b - self.apply(x)[:, 0]
            X[:, j] = x
            res[:, j] = rj
        self._solved = (R, X, res)
        return X, res

    def unbounded_direction(self, My, HMy, Qyy, eig_tol, margins: Margins):
        """As the dense solver, with the null-space component read off the MINRES residual."""
        _, res = self._solve_lsq(HMy)
        gn = np.linalg.norm(res, axis=0)
        j = int(np.argmax(gn))
        margins.add("ICQP: coupling to null(Qww)", gn[j], eig_tol)
        if gn[j] <= max(eig_tol, 1e-8 * np.linalg.norm(HMy[:, j])):
            return None
        # n0 = res_j lies in null(Qww): the form along My e_j - alpha n0 is Qyy_jj - 2 alpha |n0|^2
        alpha = (abs(Qyy[j, j]) + 1.0) / gn[j] ** 2
        return My[:, j] - alpha * res[:, j]

    def solve(self, R, eig_tol: float, margins: Margins):
        return self._solve_lsq(R)[0]


def make_subspace(prob: ReducedProblem, blocks: list[Block], solver: str, max_dense_params: int,
                  progress=None) -> SubspaceSolver:
    """``solver``: "dense", "matrix_free", or "auto" (dense up to ``max_dense_params`` kept coordinates)."""
    if solver == "dense" or (solver == "auto" and prob.n <= max_dense_params):
        return DenseSubspace(prob, blocks)
    return ProjectedSubspace(prob, blocks, progress)
