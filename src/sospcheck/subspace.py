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
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

from .margins import FRAGILITY_FACTOR, Margins
from .reduced import Block, ReducedProblem

__all__ = ["MinEig", "SubspaceSolver", "DenseSubspace", "ProjectedSubspace", "KroneckerPreconditioner",
           "Ritz", "lanczos_min", "preconditioned_lanczos", "extreme_ritz", "spectral_norm", "make_subspace"]


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
    """The ECQP subspace of the dense reduced ``H``, certified by one Cholesky factorisation.

    Basis: each block's constraint directions ``QE`` are rotated onto its first coordinates by
    Householder reflectors ``Q_b`` (block diagonal, so ``Q' H Q`` costs ``O(n)`` per reflector and
    column); ``Mw`` is ``Q`` without those columns, and ``Qww = Mw' H Mw`` is the rotated ``H`` without
    those rows and columns. They are decoupled in place (zero rows and columns, a positive diagonal),
    so one n x n array holds everything.

    The ECQP asks only whether ``Qww > eig_tol`` (DESIGN.md section 3, step 4). A Cholesky factorisation
    of ``Qww - tau I`` with ``tau = 2 F eig_tol + (n + 1) n eps |H|`` (``F`` the fragility factor) that
    completes proves ``lambda_min(Qww) > 2 F eig_tol`` for the computed ``Qww``: the rounding of the
    factorisation is a backward error below ``(n + 1) n eps`` times the largest diagonal entry
    (Demmel's bound). No tolerance scale in ``[1/F, F]`` then changes the decision. The reported
    value is then ``tau + 1 / theta`` with ``theta`` the largest Ritz value of ``(Qww - tau I)^-1``
    (Lanczos through the factor, run to convergence): an upper bound on ``lambda_min``, as accurate
    as ``eigh``. When the factorisation fails (an eigenvalue within ``2 F eig_tol`` of zero or below),
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
        d[self._c] = max(self.hessian_norm, 1.0)
        np.fill_diagonal(H, d)
        self._shift = shift
        _, info = dpotrf(H.T, lower=1, clean=0, overwrite_a=1)
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
        eps = np.finfo(float).eps
        floor = 2.0 * FRAGILITY_FACTOR * eig_tol
        tau = floor + (n + 1) * n * eps * self.hessian_norm
        if not self._factor(tau):
            self._restore()
            return None
        v = np.zeros(n)
        v[self._w] = np.random.default_rng(0).standard_normal(self._w.size)
        ritz = extreme_ritz(lambda x: self._solve_factored(x[:, None])[:, 0], v, 1e-12, 200)
        value = tau + 1.0 / ritz.value
        # converged: an error at the level of eigh's rounding; otherwise only the proven interval
        accuracy = 0.0 if ritz.converged else value - floor
        eig = MinEig(value, self._from_w(ritz.vector, full=True), accuracy,
                     f"dense (Cholesky of Qww - tau I, tau = {tau:.3g}: lambda_min > {floor:.3g} proven)")
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
    """Rows ``idx`` of ``A`` (in place) times ``Q' = P_r ... P_1``, or with ``backwards`` times ``Q = P_1 ... P_r``."""
    rows = A[idx]
    order = range(V.shape[1] - 1, -1, -1) if backwards else range(V.shape[1])
    for j in order:
        if beta[j]:
            rows -= np.outer(beta[j] * V[:, j], V[:, j] @ rows)
    A[idx] = rows


class Ritz(NamedTuple):
    """A Ritz pair of a Lanczos run: ``value``, unit ``vector``, ``residual = beta_j |s_j|`` (an eigenvalue lies
    within it of ``value``) and whether the run's stopping test was met."""

    value: float
    vector: np.ndarray
    residual: float
    converged: bool


def extreme_ritz(apply, v0: np.ndarray, rtol: float, max_steps: int) -> Ritz:
    """The largest eigenvalue of a symmetric operator by Lanczos with full reorthogonalisation, until its
    Ritz pair has residual ``<= rtol |value|`` or the Krylov space is invariant (``converged``), or
    ``max_steps``. The Ritz value is never above the largest eigenvalue; the residual test alone does not
    tell it from a neighbour, which a small ``rtol`` makes unlikely (``1 / lambda_min`` of a factorised
    matrix, where the top stands apart, takes a few dozen steps to ``1e-12``)."""
    for Qm, ev, S, beta in _lanczos(apply, v0, min(v0.size, max_steps)):
        i = ev.size - 1
        theta = float(ev[i])
        residual = beta * abs(S[-1, i])
        converged = residual <= rtol * abs(theta) or beta <= 1e-14 * max(abs(theta), 1e-300)
        if converged or Qm.shape[0] == min(v0.size, max_steps):
            return Ritz(theta, Qm.T @ S[:, i], residual, converged)
    raise ValueError("extreme_ritz needs max_steps >= 1 and a nonzero v0")


def lanczos_min(apply, v0: np.ndarray, eig_tol: float, max_steps: int):
    """Lanczos with full reorthogonalisation for the smallest eigenvalue, with two early exits.

    ``("negative", rq, y)``: the first Ritz vector with ``y' A y < -eig_tol |y|^2``, checked with one
    extra product (a certificate long before the eigenvalue converges). ``("converged", theta, y)``:
    the smallest Ritz pair with residual ``beta_j |s_j| <= eig_tol / 10`` (or an invariant Krylov
    space), so an eigenvalue lies within ``eig_tol / 10`` of ``theta``. None after ``max_steps``.
    """
    for Qm, theta, S, beta in _lanczos(apply, v0, max_steps):
        if theta[0] < -eig_tol:
            y = Qm.T @ S[:, 0]
            y /= np.linalg.norm(y)
            rq = float(y @ apply(y))
            if rq < -eig_tol:
                return "negative", rq, y
        invariant = beta <= 1e-14 * max(1.0, abs(theta).max())
        if invariant or beta * abs(S[-1, 0]) <= 0.1 * eig_tol:
            y = Qm.T @ S[:, 0]
            return "converged", float(theta[0]), y / np.linalg.norm(y)
    return None


def _lanczos(apply, v0: np.ndarray, max_steps: int):
    """Lanczos with full reorthogonalisation (twice is enough, Kahan): after each step yields the basis so
    far (rows), the eigendecomposition ``(theta, S)`` of the tridiagonal and ``beta``, the norm of the next
    residual; a caller stops on an invariant space (``beta ~ 0``)."""
    Q = np.empty((max_steps, v0.size))
    Q[0] = v0 / np.linalg.norm(v0)
    alphas, betas = [], []
    for j in range(max_steps):
        w = apply(Q[j])
        alphas.append(float(Q[j] @ w))
        Qm = Q[: j + 1]
        w -= Qm.T @ (Qm @ w)
        w -= Qm.T @ (Qm @ w)
        theta, S = np.linalg.eigh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
        beta = float(np.linalg.norm(w))
        yield Qm, theta, S, beta
        if j + 1 < max_steps:
            betas.append(beta)
            Q[j + 1] = w / beta


def preconditioned_lanczos(apply, precond, v0: np.ndarray, max_steps: int, rtol: float, negative=None):
    """Lanczos on ``C = K^(1/2) A K^(1/2)`` through products with ``A`` (``apply``) and ``K`` (``precond``,
    symmetric positive definite) only, for the sign of ``lambda_min(A)``: by Sylvester's law of inertia ``C``
    and ``A`` have the same number of negative eigenvalues. With a ``K`` close to ``A^-1`` the bottom of
    ``C``'s spectrum is far better separated than ``A``'s, so its smallest Ritz value converges in far fewer
    products.

    The basis is kept as ``y_j = K^(-1/2) u_j`` and ``x_j = K y_j = K^(1/2) u_j`` (``u_j`` the orthonormal
    Lanczos vectors of ``C``): ``u_i' C u_j = x_i' A x_j`` and ``u_i' w = x_i' K^(-1/2) w``, one product
    with ``K`` a step. Exits: ``("positive", theta, resid, x)``
    when the smallest Ritz value ``theta > 0`` has residual ``resid = beta_j |s_j1| <= rtol theta`` (so
    an eigenvalue of ``C`` lies in ``[theta - resid, theta + resid]``, and ``A`` is positive definite when
    that is the smallest one, the only assumption, as for any Ritz value); ``("negative", value, x)``
    when ``negative(x)`` (called for a Ritz vector ``x = K^(1/2) u`` with ``x' A x < 0``) returns a value;
    ``("nonpositive", theta, None)`` when ``theta < 0`` has converged likewise without ``negative``
    accepting it. None after ``max_steps``. ``x`` is in the coordinates of ``A``.
    """
    from scipy.linalg import eigh_tridiagonal

    n = v0.size
    Y, X = np.empty((max_steps, n)), np.empty((max_steps, n))
    kv = precond(v0)
    scale = np.sqrt(float(v0 @ kv))
    Y[0], X[0] = v0 / scale, kv / scale
    alphas, betas = [], []
    last_checked = 0.0
    for j in range(max_steps):
        w = apply(X[j])
        alphas.append(float(X[j] @ w))
        Ym, Xm = Y[: j + 1], X[: j + 1]
        for _ in range(2):  # full reorthogonalisation in the K-inner product (u_i' w = x_i' w), twice (Kahan)
            w -= Ym.T @ (Xm @ w)
        wx = precond(w)
        beta = float(np.sqrt(max(float(w @ wx), 0.0)))
        theta, S = eigh_tridiagonal(np.array(alphas), np.array(betas))
        resid = beta * abs(S[-1, 0])
        if theta[0] < 0 and negative is not None and theta[0] < 2 * last_checked:
            last_checked = theta[0]
            xr = Xm.T @ S[:, 0]
            value = negative(xr)
            if value is not None:
                return "negative", value, xr
        converged = resid <= rtol * abs(theta[0]) or beta <= 1e-14 * max(1.0, abs(theta).max())
        if converged and theta[0] > 0:
            T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
            return "positive", float(theta[0]), resid, _ritz_of_a(Xm, T, S[:, 0])
        if converged:
            return "nonpositive", float(theta[0]), None
        if j + 1 == max_steps:
            break
        betas.append(beta)
        Y[j + 1], X[j + 1] = w / beta, wx / beta
    return None


def _ritz_of_a(X: np.ndarray, T: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The vector of ``span(x_j)`` (the rows of ``X``) with the smallest Rayleigh quotient of ``A``:
    ``x_i' A x_j = T_ij`` (the Lanczos relation), so it solves ``T z = lambda (X X') z``; a far better
    estimate of ``A``'s bottom eigenvector than the Ritz vector ``X' s`` of ``C`` (returned when ``X X'`` is
    numerically singular)."""
    from scipy.linalg import LinAlgError, eigh

    try:
        _, z = eigh(T, X @ X.T, subset_by_index=[0, 0])
    except LinAlgError:
        return X.T @ s
    return X.T @ z[:, 0]


class KroneckerPreconditioner:
    """``K = B^-1`` on the kept coordinates for the Kronecker approximation ``B`` of the Gauss-Newton part
    (:meth:`sospcheck.operators.HessianOperator.kronecker_factors`): ``Hbar (x) Go`` on ``[dW2 db2]`` and
    ``mk[k] Xr'Xr`` on each ``nu_k``, plus the weight decay. Eigenvalues below ``1e-12`` of the largest are
    raised to it (``B`` must be positive definite; its accuracy affects only the number of products).
    Built from one pass over the data and three small eigendecompositions (dy, dh + 1 and rho)."""

    def __init__(self, prob: ReducedProblem):
        op = prob.operator(prob.J_base)
        Hbar, Go, mk = op.kronecker_factors()
        lam = prob.pt.weight_decay
        self.layout, self.keep = prob.layout, prob.keep
        dh_, Ph = np.linalg.eigh(0.5 * (Hbar + Hbar.T))
        dg, Pg = np.linalg.eigh(Go)
        dx, Px = np.linalg.eigh(prob.xr_gram())
        small = np.outer(np.maximum(dh_, 0.0), np.maximum(dg, 0.0)) + lam
        nu = np.outer(np.maximum(mk, 0.0), np.maximum(dx, 0.0)) + lam
        floor = 1e-12 * max(small.max(initial=0.0), nu.max(initial=0.0), 1e-300)
        self._small = (Ph, Pg, 1.0 / np.maximum(small, floor))
        self._nu = (Px, 1.0 / np.maximum(nu, floor))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, float)
        lay = self.layout
        full = np.zeros((lay.n,) + x.shape[1:])
        full[self.keep] = x
        F = full.reshape(lay.n, -1)
        U, Nu, c = lay.split(F)
        Ph, Pg, inv = self._small
        Z = U if c is None else np.concatenate([U, c[:, :, None]], axis=2)  # (b, dy, dh [+ 1])
        Z = Ph @ ((Ph.T @ Z @ Pg) * inv) @ Pg.T
        Px, inv_nu = self._nu
        Nu = ((Nu @ Px) * inv_nu) @ Px.T
        out = lay.join(np.ascontiguousarray(Z[:, :, : lay.dh]), Nu, None if c is None else Z[:, :, lay.dh])
        return out[self.keep].reshape(x.shape)


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
    residual ``<= theta / 10``, hence (Sylvester) ``lambda_min(Qww) > tau`` provided that Ritz value
    belongs to the smallest eigenvalue; no scaling of the tolerances within ``[1/F, F]`` changes the
    decision then. The value reported is the smallest Rayleigh quotient of ``Qww`` on the preconditioned
    Krylov space (computed exactly with one more product), an upper bound on ``lambda_min``, and the
    margins see the interval ``[tau, value]``. A Ritz vector with Rayleigh
    quotient below ``-eig_tol`` certifies a descent direction as before. Otherwise (``lambda_min``
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

        # its two bases (y_j and x_j) stay within a third of the data's size (or 2^20 floats)
        steps = min(self.n, _EXACT_STEPS, max((m * max(rho, 1)) // (6 * self.n), (1 << 19) // self.n))
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
        detail = (f"matrix-free (preconditioned Lanczos, {self.n_products} products: Qww - tau I > 0 with "
                  f"tau = {tau:.3g}; value = a Rayleigh quotient, an upper bound)")
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
        return DenseSubspace(prob, blocks)
    return ProjectedSubspace(prob, blocks, progress)
