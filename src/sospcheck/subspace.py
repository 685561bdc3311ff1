"""Solvers on the ECQP subspace ``{theta : every constraint row of every block = 0}`` (DESIGN.md sections 3, 5).

With ``N`` a basis of ``null(A)`` and ``C = B N``, ``theta = N (C^+ y + W w)``, ``W`` a basis of
``null(C)``: the ECQP is the ``w`` block (all kinks held, ``y = 0``), the same for every sign choice.
A :class:`SubspaceSolver` gives its smallest eigenvalue ``lambda_min(Qww)``, solves with ``Qww^+``
(the Schur complement of each ICQP) and, when ``Qww`` is singular, a direction along which an ICQP's
form is unbounded below. Two implementations: :class:`sospcheck.dense_subspace.DenseSubspace` (dense
reduced ``H``, a Cholesky certificate) and :class:`ProjectedSubspace` (block-diagonal projector, ``H``
through products only, the Lanczos runs of :mod:`sospcheck.krylov`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from .krylov import KroneckerPreconditioner, lanczos_min, preconditioned_lanczos
from .margins import FRAGILITY_FACTOR, Margins
from .reduced import Block, ReducedProblem

__all__ = ["MinEig", "SubspaceSolver", "ProjectedSubspace", "lanczos_min", "spectral_norm", "make_subspace"]


def __getattr__(name: str):
    """``DenseSubspace`` from :mod:`sospcheck.dense_subspace` (which builds on this module), as before."""
    if name == "DenseSubspace":
        from .dense_subspace import DenseSubspace

        return DenseSubspace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def spectral_norm(H) -> float:
    """``|H|_2`` of a symmetric matrix (an array, or a ``LinearOperator`` when over 400 rows)."""
    if H.shape[0] == 0:
        return 0.0
    if H.shape[0] <= 400:
        return float(np.max(np.abs(np.linalg.eigvalsh(H))))
    from scipy.sparse.linalg import eigsh

    return float(abs(eigsh(H, k=1, which="LM", return_eigenvectors=False)[0]))


# up to this many coordinates (and Lanczos steps) the plain run goes to an invariant Krylov space
_EXACT_STEPS = 300

# a value accurate to eig_tol / 10 at every tolerance scale is known, over the scales the fragility
# probe tries, only to within that at this scale plus that at the largest one
_SCALED_ACCURACY = 0.1 * (1 + FRAGILITY_FACTOR)


class ProjectedSubspace:
    """The ECQP subspace by its block-diagonal projector; ``H`` only through products (DESIGN.md section 5).

    The minimum eigenvalue comes from Lanczos on ``P H P + sigma (I - P)``: the shift
    ``sigma > |H|`` pushes the constrained directions above the spectrum of interest.

    Up to ``_EXACT_STEPS`` coordinates, Lanczos runs to an invariant Krylov space (the exact
    ``lambda_min``) unless a Ritz vector certifies negative curvature first. Larger problems first ask
    the ECQP's question directly: is ``Qww - tau I`` positive definite, ``tau = 2 F eig_tol`` (``F`` the
    fragility factor)? Lanczos on it, preconditioned by the Kronecker approximation of the Gauss-Newton
    part (:class:`KroneckerPreconditioner`, :func:`preconditioned_lanczos`), answers in a few dozen
    products where the plain run needs hundreds (the bottom of a Gauss-Newton spectrum is a dense
    continuum). What it establishes: a Ritz value ``theta > 0`` of the preconditioned operator with
    residual ``<= theta / 10``, so an eigenvalue of it lies in ``[0.9 theta, 1.1 theta]``; when that is the
    smallest, ``lambda_min(Qww) > tau`` (Sylvester) and no scaling of the tolerances within ``[1/F, F]``
    changes the decision. That it is the smallest is the Krylov assumption (a start vector with a
    non-negligible component along the bottom eigenvector; a random one here), the same on which the
    plain Lanczos and ARPACK values rest: the matrix-free answer is an estimate, not a proof (the dense
    solver's Cholesky certificate is one), and its detail says so. The value reported is the smallest
    Rayleigh quotient of ``Qww`` on the preconditioned Krylov space (computed exactly with one more
    product), an upper bound on ``lambda_min``, and the margins see the interval ``[tau, value]``. A Ritz
    vector with Rayleigh quotient below ``-eig_tol`` certifies a descent direction as before. Otherwise (``lambda_min``
    near zero) the plain Lanczos run with early exits, and ARPACK to finish, decide as for small
    problems.
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
        if self.n > _EXACT_STEPS:
            eig = self._certify(v, eig_tol)
            if eig is not None:
                return eig
        found = lanczos_min(lambda x: self.apply(x)[:, 0], v, eig_tol,
                            max_steps=min(self.n, _EXACT_STEPS, (1 << 27) // self.n + 2))
        if found is not None:
            # a negative Rayleigh quotient is exact; a converged one is accurate to eig_tol / 10
            return self._report(found[1], found[2], _SCALED_ACCURACY * eig_tol if found[0] == "converged" else 0.0)
        return self._arpack_min(v, eig_tol)

    def _certify(self, v: np.ndarray, eig_tol: float) -> MinEig | None:
        """``Qww - tau I > 0`` (class docstring) or a certified negative Rayleigh quotient; None when neither."""
        tau = 2.0 * FRAGILITY_FACTOR * eig_tol
        precond = KroneckerPreconditioner(self.prob)
        m, rho = self.prob.Xr.shape

        def shifted(x):
            x = x.reshape(self.n, 1)
            return (self.apply(x) - tau * self.project(x))[:, 0]

        def negative(x):  # a Rayleigh quotient of Qww below -eig_tol, computed exactly
            u = self.project(x)[:, 0]
            u /= np.linalg.norm(u)
            rq = float(u @ self.apply(u)[:, 0])
            return (rq, u) if rq < -eig_tol else None

        # its two bases (y_j and x_j) stay within a third of the data's size (or 2^17 floats; 20 steps at least)
        steps = min(self.n, _EXACT_STEPS, max((m * max(rho, 1)) // (6 * self.n), (1 << 16) // self.n, 20))
        found = preconditioned_lanczos(shifted, precond, v, steps, 0.1, negative)
        if found is None or found[0] == "nonpositive":
            return None
        if found[0] == "negative":
            rq, u = found[1]
            return self._report(rq, u, 0.0, "preconditioned Lanczos")
        u = self.project(found[3])[:, 0]
        u /= np.linalg.norm(u)
        value = float(u @ self.apply(u)[:, 0])
        if value <= tau:  # cannot happen when lambda_min > tau; kept as a guard against rounding
            return None
        detail = (f"matrix-free (preconditioned Lanczos, {self.n_products} products: Krylov estimate Qww - tau I > 0 "
                  f"with tau = {tau:.3g}; value = a Rayleigh quotient, an upper bound)")
        return MinEig(value, u, value - tau, detail)

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

    def _report(self, lam: float, v: np.ndarray, accuracy: float, method: str = "Lanczos") -> MinEig:
        detail = (f"matrix-free ({method}, {self.n_products} products, residual "
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
        from .dense_subspace import DenseSubspace  # it builds on MinEig and spectral_norm here

        return DenseSubspace(prob, blocks)
    return ProjectedSubspace(prob, blocks, progress)
