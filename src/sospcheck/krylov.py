"""Lanczos runs for the ECQP's eigenvalue questions and the Kronecker preconditioner of the matrix-free
solver (DESIGN.md section 5).

Every routine here reads its operator through products only. What a run establishes is stated with
each: a Rayleigh quotient is exact (to the rounding of one product); a Ritz value with residual
``r`` has an eigenvalue within ``r`` of it, and that it is the extreme one is the Krylov assumption
(a start vector with a non-negligible component along the extreme eigenvector).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .reduced import ReducedProblem

__all__ = ["Ritz", "extreme_ritz", "lanczos_min", "preconditioned_lanczos", "KroneckerPreconditioner"]


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

