"""The linear solves of :func:`sospcheck.stratum.converge_on_stratum` (DESIGN.md section 8.2): the exact
Hessian of the risk restricted to the stratum, with the rescaling orbits projected out, solved densely
(one eigendecomposition serving several damped steps) or by MINRES on Hessian products."""

from __future__ import annotations

import numpy as np
from scipy.linalg import eigh
from scipy.sparse.linalg import LinearOperator, minres

from .operators import HessianOperator

__all__ = ["DenseSolver", "MatrixFreeSolver"]


def _operator(st, s, lam: float) -> HessianOperator:
    """The exact Hessian of the restricted risk in full coordinates (DESIGN.md 8.2): Gauss-Newton part
    plus the cross term ``w_k``/``Z_k``, with the stratum's fixed slopes."""
    identity = bool(np.all(s.Hl == s.Hl[0, 0, 0] * np.eye(st.dy)))
    return HessianOperator(s.O, st.Xbar, s.W2, s.r, s.Hl, st.S, lam, identity_hessian=identity,
                           has_b2=st.net.has_b2)


def _deflate(H: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """``Pi H Pi`` with ``Pi = I - Q Q'`` (``Q`` orthonormal), by rank-``q`` updates."""
    if Q.shape[1] == 0:
        return H
    HQ = H @ Q
    return H - Q @ HQ.T - HQ @ Q.T + Q @ (Q.T @ HQ) @ Q.T


class DenseSolver:
    """``Pi H Pi = V diag(l) V'`` (``Pi`` removes the rescaling orbits, DESIGN.md 8.2); the step
    ``-V diag(f(l)) V' g`` with ``f(l) = l / (l^2 + mu)`` for ``|l| > rcond max|l|`` and 0 below.
    One factorisation serves every damping and, while it contracts well, later steps too."""

    name = "dense"
    reuse = True
    nu_min = 1e-8

    def __init__(self, st, s, lam: float, rcond: float, max_products: int):
        Hf = _operator(st, s, lam).dense()
        H = np.asarray(st.P.T @ (st.P.T @ Hf).T)
        if not lam:
            H = _deflate(H, st.symmetry_basis(s.theta))
        self.l, self.V = eigh(0.5 * (H + H.T))
        self.lmax = float(np.max(np.abs(self.l))) if self.l.size else 0.0
        keep = np.abs(self.l) > rcond * self.lmax
        self.l, self.V = self.l[keep], self.V[:, keep]

    def step(self, g: np.ndarray, nu: float, g_rel: float) -> tuple[np.ndarray, float, float]:
        """The step, its ``mu = nu max|l| |g| / |z|`` and the fraction 1."""
        mu = nu * self.lmax * g_rel
        coef = (self.V.T @ g) * (self.l / (self.l * self.l + mu))
        return -(self.V @ coef), mu, 1.0


class MatrixFreeSolver:
    """Inexact Newton: MINRES on ``Pi H Pi d = -Pi g`` with Hessian products only (from 0 it tends
    to the minimum-norm solution), to a residual ``rtol |g|``; damping by taking the fraction
    ``1 / nu`` of that step."""

    name = "matrix_free"
    reuse = False
    nu_min = 1.0
    rtol = 1e-6

    def __init__(self, st, s, lam: float, rcond: float, max_products: int):
        op = _operator(st, s, lam)
        P = st.P
        Q = st.symmetry_basis(s.theta) if not lam else np.zeros((st.n, 0))

        def mv(v):
            v = np.asarray(v).ravel()
            v = v - Q @ (Q.T @ v)
            Hv = P.T @ op.matmat((P @ v)[:, None])[:, 0]
            return Hv - Q @ (Q.T @ Hv)

        self.H = LinearOperator((st.n, st.n), matvec=mv, rmatvec=mv, dtype=float)
        self.Q, self.max_products = Q, max_products
        self._newton = None

    def step(self, g: np.ndarray, nu: float, g_rel: float) -> tuple[np.ndarray, float, float]:
        if self._newton is None:  # one solve per Hessian; damping rescales it
            b = -(g - self.Q @ (self.Q.T @ g))
            self._newton = minres(self.H, b, rtol=self.rtol, maxiter=self.max_products)[0]
        return self._newton / nu, 0.0, 1.0 / nu
