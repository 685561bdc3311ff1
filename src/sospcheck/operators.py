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

import copy

import numpy as np

__all__ = ["Layout", "HessianOperator", "TorchHessianOperator", "make_operator"]


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

    ``products`` counts the columns multiplied by ``H`` so far (Hessian-vector products), shared
    with the operators made from this one by :meth:`with_slopes`.
    """

    xp = np

    def __init__(self, O, Xr, W2, r, Hl, J, weight_decay: float = 0.0, identity_hessian: bool = False,
                 has_b2: bool = True):
        self.lam = weight_decay
        # squared loss: H_i = weight * I, so the GN product needs no per-sample dy x dy solve
        self.h_scalar = float(Hl[0, 0, 0]) if identity_hessian else None
        self.layout = Layout(W2.shape[0], W2.shape[1], Xr.shape[1], has_b2)
        self.m = O.shape[0]
        self._count = [0]  # one list shared by the with_slopes copies
        arrays = dict(O=O, Xr=Xr, W2=W2, r=r, Jt=np.ascontiguousarray(J.T),
                      Hl=None if identity_hessian else np.asarray(Hl))
        for name, arr in arrays.items():
            setattr(self, name, None if arr is None else self._to_backend(arr))

    @property
    def products(self) -> int:
        """Hessian-vector products done by this operator and those sharing its data."""
        return self._count[0]

    def _to_backend(self, arr: np.ndarray):
        return arr

    def with_slopes(self, J: np.ndarray) -> "HessianOperator":
        """The operator of another slope pattern, sharing the data already on the backend."""
        other = copy.copy(self)
        other.Jt = self._to_backend(np.ascontiguousarray(J.T))
        return other

    def _from_backend(self, arr) -> np.ndarray:
        return arr

    def matmat(self, Theta: np.ndarray, max_elements: int = 1 << 24) -> np.ndarray:
        """``H Theta`` for ``Theta`` (n, b); the data are visited in row chunks so that the
        intermediates stay below ``max_elements`` floats (memory independent of ``m``)."""
        xp = self.xp
        self._count[0] += Theta.shape[1]
        U, Nu, c = (None if a is None else self._to_backend(np.ascontiguousarray(a)) for a in self.layout.split(Theta))
        b, dh = U.shape[0], self.layout.dh
        step = max(1, min(self.m, max_elements // max(1, b * max(dh, self.layout.dy))))
        gU, gNu = xp.zeros_like(U), xp.zeros_like(Nu)
        gc = xp.zeros_like(c) if c is not None else None
        dy, rho = self.layout.dy, Nu.shape[2]
        # every product below is one GEMM over the batch (rows b*dh or b*dy), not b small ones
        Nu2, U2 = Nu.reshape(b * dh, rho), U.reshape(b * dy, dh)
        W2 = self.W2
        for s in range(0, self.m, step):
            rows = slice(s, min(self.m, s + step))
            O, Xr, Jt, rt = self.O[rows], self.Xr[rows], self.Jt[:, rows], self.r[rows].T
            mc = O.shape[0]
            JT = (Nu2 @ Xr.T).reshape(b, dh, mc) * Jt  # J_ik t_ik
            JT2 = JT.reshape(b * dh, mc)
            dY1 = (U2 @ O.T).reshape(b, dy, mc) + (W2 @ JT).reshape(b, dy, mc)
            if c is not None:
                dY1 = dY1 + c[:, :, None]
            P = self.h_scalar * dY1 if self.h_scalar is not None else xp.einsum("icd,bdi->bci", self.Hl[rows], dY1)
            P2 = P.reshape(b * dy, mc)
            gU += (P2 @ O).reshape(b, dy, dh) + (JT2 @ rt.T).reshape(b, dh, dy).swapaxes(1, 2)
            if c is not None:
                gc += P.sum(2)
            back = (W2.T @ P).reshape(b * dh, mc) + (U.swapaxes(1, 2).reshape(b * dh, dy) @ rt)
            gNu += ((back.reshape(b, dh, mc) * Jt).reshape(b * dh, mc) @ Xr).reshape(b, dh, rho)
        out = self.layout.join(*(None if a is None else self._from_backend(a) for a in (gU, gNu, gc)))
        if self.lam:
            out = out + self.lam * Theta
        return out

    def dense(self, keep: np.ndarray | None = None, batch: int = 256) -> np.ndarray:
        """``H[keep][:, keep]``, symmetric.

        NumPy backend: ``H = sum_i G_i' H_i G_i + C + lam I`` from the per-sample output Jacobians
        ``G_i`` (dy x n, built a chunk of rows at a time, never all m at once) and the block-diagonal
        cross term ``C`` (``u_k`` with ``nu_k``: ``sum_i r_i J_ik xr_i'``), DESIGN.md section 5. One
        Gram product per chunk instead of ``n`` Hessian-vector products. Other backends: products
        with identity columns, ``batch`` at a time.
        """
        n = self.layout.n
        cols = np.arange(n) if keep is None else np.asarray(keep)
        if self.xp is not np:
            return self._dense_by_products(cols, batch)
        lay, m = self.layout, self.m
        dy, dh, rho = lay.dy, lay.dh, lay.rho
        q = cols.size
        H = np.zeros((q, q))
        step = max(1, min(m, (1 << 24) // max(1, dy * n)))
        for s in range(0, m, step):
            rows = slice(s, min(m, s + step))
            O, Xr, J = self.O[rows], self.Xr[rows], self.Jt[:, rows].T
            mc = O.shape[0]
            G = np.zeros((dy, mc, n))
            for d in range(dy):
                G[d, :, d * dh:(d + 1) * dh] = O
                G[d, :, lay.n_u:lay.n_u + dh * rho] = ((self.W2[d] * J)[:, :, None] * Xr[:, None, :]).reshape(mc, -1)
                if lay.has_b2:
                    G[d, :, lay.n_u + dh * rho + d] = 1.0
            G = G[:, :, cols]
            if self.h_scalar is not None:
                for d in range(dy):
                    H += self.h_scalar * (G[d].T @ G[d])
            else:
                Hl = self.Hl[rows]
                for d in range(dy):
                    for e in range(dy):
                        H += G[d].T @ (Hl[:, d, e][:, None] * G[e])
        # cross term: d^2 f_id / d U[d, k] d Nu[k, :] = J_ik xr_i
        E = ((self.Jt.T[:, :, None] * self.r[:, None, :]).reshape(m, dh * dy).T @ self.Xr).reshape(dh, dy, rho)
        pos = -np.ones(n, dtype=int)
        pos[cols] = np.arange(q)
        for k in range(dh):
            nu = pos[lay.nu_index(k)]
            ok = nu >= 0
            for d in range(dy):
                u = pos[lay.u_index(k)[d]]
                if u >= 0 and ok.any():
                    H[u, nu[ok]] += E[k, d, ok]
                    H[nu[ok], u] += E[k, d, ok]
        if self.lam:
            H[np.arange(q), np.arange(q)] += self.lam
        return 0.5 * (H + H.T)

    def _dense_by_products(self, cols: np.ndarray, batch: int) -> np.ndarray:
        n = self.layout.n
        H = np.empty((cols.size, cols.size))
        for start in range(0, cols.size, batch):
            sel = cols[start : start + batch]
            E = np.zeros((n, sel.size))
            E[sel, np.arange(sel.size)] = 1.0
            H[:, start : start + sel.size] = self.matmat(E)[cols]
        return 0.5 * (H + H.T)


class TorchHessianOperator(HessianOperator):
    """The same products with PyTorch (float64) on ``device`` (a GPU when available): the data
    stay on the device, only ``theta`` and ``H theta`` cross. Needs the ``torch`` extra."""

    def __init__(self, *args, device: str | None = None, **kw):
        import torch

        self.xp = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        super().__init__(*args, **kw)

    def _to_backend(self, arr):
        arr = np.asarray(arr, dtype=np.float64)
        if not arr.flags.writeable:  # torch cannot wrap read-only memory
            arr = arr.copy()
        return self.xp.as_tensor(arr, device=self.device)

    def _from_backend(self, arr) -> np.ndarray:
        return arr.cpu().numpy()


def make_operator(backend: str, *args, **kw) -> HessianOperator:
    """``backend``: "numpy" or "torch" (``device`` keyword for the latter)."""
    if backend == "torch":
        return TorchHessianOperator(*args, **kw)
    kw.pop("device", None)
    return HessianOperator(*args, **kw)
