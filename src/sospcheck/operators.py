"""Products with the second-order form ``Q`` of one sign cone, as passes over the data (DESIGN.md sections 2, 5).

Coordinates: ``theta = [vec dW2 (dy x dh), vec nu (dh x rho), db2 (dy, absent without b2)]`` with
``dZ = nu V'`` and ``V`` a basis of the data span. For a fixed slope pattern ``J`` (m x dh), ``second(eta) =
1/2 theta' H theta`` with

    H theta = GN part  (sum_i dY1_i' H_i dY1_i, dY1 = dW2 O_i + db2 + W2 (J_i * t_i))
            + cross    (sum_k u_k' E_k nu_k, E_k = sum_i J_ik r_i xr_i')
            + weight_decay * theta.

No m x p Jacobian is formed: a product costs a few matmuls with ``O``, ``Xr`` and ``W2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Layout", "HessianOperator"]


@dataclass(frozen=True)
class Layout:
    """Where each block of ``theta`` lives."""

    dy: int
    dh: int
    rho: int
    has_b2: bool = True

    @property
    def n(self) -> int:
        return self.dy * self.dh + self.dh * self.rho + (self.dy if self.has_b2 else 0)

    @property
    def n_u(self) -> int:
        return self.dy * self.dh

    def u_index(self, k: int) -> np.ndarray:
        """Indices of ``u_k = dW2[:, k]`` (row-major ``dW2``)."""
        return np.arange(self.dy) * self.dh + k

    def nu_index(self, k: int) -> np.ndarray:
        return self.n_u + k * self.rho + np.arange(self.rho)

    def split(self, Theta: np.ndarray):
        """``Theta`` (n, b) -> ``U`` (b, dy, dh), ``Nu`` (b, dh, rho), ``c`` (b, dy) or None."""
        b = Theta.shape[1]
        T = Theta.T
        U = T[:, : self.n_u].reshape(b, self.dy, self.dh)
        Nu = T[:, self.n_u : self.n_u + self.dh * self.rho].reshape(b, self.dh, self.rho)
        c = T[:, self.n_u + self.dh * self.rho :] if self.has_b2 else None
        return U, Nu, c

    def join(self, U: np.ndarray, Nu: np.ndarray, c: np.ndarray | None) -> np.ndarray:
        b = U.shape[0]
        parts = [U.reshape(b, -1), Nu.reshape(b, -1)] + ([c] if self.has_b2 else [])
        return np.concatenate(parts, axis=1).T


class HessianOperator:
    """``theta -> H theta`` for one slope pattern ``J``; ``dense()`` applies it to the identity.

    Args:
        O: activations (m, dh). Xr: data in span coordinates, ``Xbar V`` (m, rho).
        W2: output weights (dy, dh). r, Hl: weighted loss gradients (m, dy) and Hessians (m, dy, dy).
        J: slopes (m, dh). weight_decay: lambda. has_b2: whether ``db2`` is a coordinate.
    """

    def __init__(self, O, Xr, W2, r, Hl, J, weight_decay: float = 0.0, identity_hessian: bool = False,
                 has_b2: bool = True):
        self.O, self.Xr, self.W2, self.r, self.Hl = O, Xr, W2, r, Hl
        self.Jt = np.ascontiguousarray(J.T)
        self.lam = weight_decay
        # squared loss: H_i = weight * I, so the GN product needs no per-sample dy x dy solve
        self.h_scalar = float(Hl[0, 0, 0]) if identity_hessian else None
        self.layout = Layout(W2.shape[0], W2.shape[1], Xr.shape[1], has_b2)

    def matmat(self, Theta: np.ndarray, max_elements: int = 1 << 24) -> np.ndarray:
        """``H Theta`` for ``Theta`` (n, b); the data are visited in row chunks so that the
        intermediates stay below ``max_elements`` floats (memory independent of ``m``)."""
        U, Nu, c = self.layout.split(Theta)
        b, dh = U.shape[0], self.layout.dh
        m = self.O.shape[0]
        step = max(1, min(m, max_elements // max(1, b * max(dh, self.layout.dy))))
        gU = np.zeros_like(U)
        gNu = np.zeros_like(Nu)
        gc = np.zeros_like(c) if c is not None else None
        for s in range(0, m, step):
            rows = slice(s, min(m, s + step))
            O, Xr, Jt, rt = self.O[rows], self.Xr[rows], self.Jt[:, rows], self.r[rows].T
            T = Nu @ Xr.T  # (b, dh, mc): t_ik
            JT = T * Jt
            dY1 = U @ O.T + self.W2 @ JT  # (b, dy, mc)
            if c is not None:
                dY1 = dY1 + c[:, :, None]
            if self.h_scalar is not None:
                P = self.h_scalar * dY1
            else:
                P = np.einsum("icd,bdi->bci", self.Hl[rows], dY1)
            gU += P @ O + rt @ JT.transpose(0, 2, 1)
            if c is not None:
                gc += P.sum(axis=2)
            PW = (self.W2.T @ P + U.transpose(0, 2, 1) @ rt) * Jt  # (b, dh, mc)
            gNu += PW @ Xr
        out = self.layout.join(gU, gNu, gc)
        if self.lam:
            out = out + self.lam * Theta
        return out

    def dense(self, keep: np.ndarray | None = None, batch: int = 256) -> np.ndarray:
        """``H[keep][:, keep]`` by products with identity columns; symmetrised."""
        n = self.layout.n
        cols = np.arange(n) if keep is None else np.asarray(keep)
        H = np.empty((cols.size, cols.size))
        for start in range(0, cols.size, batch):
            sel = cols[start : start + batch]
            E = np.zeros((n, sel.size))
            E[sel, np.arange(sel.size)] = 1.0
            H[:, start : start + sel.size] = self.matmat(E)[cols]
        return 0.5 * (H + H.T)
