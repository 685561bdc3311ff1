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
import warnings

import numpy as np

from .augmented import data_floats, dense, row_block, row_chunks
from .device_data import DeviceData, resolve_device
from .symmetric_tiles import SymmetricTiles

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

    def matmat(self, Theta: np.ndarray, max_elements: int | None = None) -> np.ndarray:
        """``H Theta`` for ``Theta`` (n, b); the data are visited in row chunks so that the
        intermediates stay below ``max_elements`` floats (default: an eighth of ``Xr``, at least 2^18, on
        the host; 2^24 on another backend, whose memory is the device's)."""
        xp = self.xp
        self._count[0] += Theta.shape[1]
        U, Nu, c = (None if a is None else self._to_backend(np.ascontiguousarray(a)) for a in self.layout.split(Theta))
        b, dh = U.shape[0], self.layout.dh
        if max_elements is None:
            max_elements = data_floats(self.m, self.layout.rho, 1 << 16) if xp is np else 1 << 24
        step = max(1, min(self.m, max_elements // max(1, b * max(dh, self.layout.dy))))
        gU, gNu = xp.zeros_like(U), xp.zeros_like(Nu)
        gc = xp.zeros_like(c) if c is not None else None
        dy, rho = self.layout.dy, Nu.shape[2]
        # every product below is one GEMM over the batch (rows b*dh or b*dy), not b small ones
        Nu2, U2 = Nu.reshape(b * dh, rho), U.reshape(b * dy, dh)
        W2 = self.W2
        for s in range(0, self.m, step):
            rows = slice(s, min(self.m, s + step))
            O, Xr, Jt, rt = self.O[rows], row_block(self.Xr, rows), self.Jt[:, rows], self.r[rows].T
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
        """``H[keep][:, keep]``, symmetric: :meth:`tiles` with one tile."""
        return self.tiles(np.arange(self.layout.n) if keep is None else keep, batch=batch).dense()

    def tiles(self, keep: np.ndarray, bounds=None, batch: int = 256) -> SymmetricTiles:
        """``H[keep][:, keep]`` as :class:`SymmetricTiles` (one tile unless ``bounds`` says otherwise), in the
        order of ``keep``.

        NumPy backend: ``H = sum_i G_i' H_i G_i + C + lam I`` from the per-sample output Jacobians
        ``G_i`` (DESIGN.md section 5), block by block, a chunk of rows at a time (no m x n array): the
        ``nu_k, nu_l`` block is ``Xr' diag(c_kl) Xr`` with ``c_ikl = J_ik J_il w_k' H_i w_l``, formed on the
        rows where ``c_kl`` is nonzero only (for a ReLU the points where both neurons are active) and
        independent of ``dy``; the rows of ``u`` and ``b2`` are few. ``C`` is the block-diagonal cross
        term (``u_k`` with ``nu_k``: ``sum_i r_i J_ik xr_i'``). Other backends: products with identity
        columns, ``batch`` at a time (``n x n`` on the host).
        """
        keep = np.asarray(keep)
        if self.xp is not np:
            return SymmetricTiles.of_dense(self._dense_by_products(keep, batch), bounds)
        S = SymmetricTiles([0, keep.size] if bounds is None else bounds)
        _gram_hessian(self, keep, S)
        return S

    def kronecker_factors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Factors of a Kronecker approximation of the Gauss-Newton part (a preconditioner, DESIGN.md section 5).

        Returns ``(Hbar, Go, mk)``: on ``[dW2 db2]`` (dy x (dh + 1), or dy x dh without ``b2``) the GN block
        is ``sum_i H_i (x) o_i o_i'`` with ``o_i = [O_i 1]``, approximated by ``Hbar (x) Go`` with ``Hbar``
        the mean ``H_i`` and ``Go = sum_i o_i o_i'`` (exact for the squared loss); the ``nu_k`` block
        ``sum_i J_ik^2 w_k' H_i w_k xr_i xr_i'`` by ``mk[k] Xr' Xr``, ``mk[k]`` the mean of its weights.
        One pass over the data, a chunk of rows at a time.
        """
        lay, m = self.layout, self.m
        dy, dh = lay.dy, lay.dh
        width = dh + 1 if lay.has_b2 else dh
        Go = np.zeros((width, width))
        Hsum = np.zeros((dy, dy))
        mk = np.zeros(dh)
        W2 = self._from_backend(self.W2)
        for rows in row_chunks(m, 2 * dh * dy + dh + 1, data_floats(m, lay.rho, 1 << 16)):
            O, J = self._from_backend(self.O[rows]), self._from_backend(self.Jt[:, rows]).T
            Oa = np.hstack([O, np.ones((O.shape[0], 1))]) if lay.has_b2 else O
            Go += Oa.T @ Oa
            if self.h_scalar is not None:
                mk += self.h_scalar * np.sum(J * J, axis=0) * np.sum(W2**2, axis=0)
            else:
                Hl = self._from_backend(self.Hl[rows])
                Hsum += Hl.sum(axis=0)
                mk += np.sum(J * J * np.einsum("dk,ide,ek->ik", W2, Hl, W2), axis=0)
        Hbar = self.h_scalar * np.eye(dy) if self.h_scalar is not None else Hsum / max(m, 1)
        return Hbar, Go, mk / max(m, 1)

    def _dense_by_products(self, cols: np.ndarray, batch: int) -> np.ndarray:
        n = self.layout.n
        H = np.empty((cols.size, cols.size))
        for start in range(0, cols.size, batch):
            sel = cols[start : start + batch]
            E = np.zeros((n, sel.size))
            E[sel, np.arange(sel.size)] = 1.0
            H[:, start : start + sel.size] = self.matmat(E)[cols]
        return 0.5 * (H + H.T)


def _gram_hessian(op: HessianOperator, cols: np.ndarray, S: SymmetricTiles) -> None:
    """:meth:`HessianOperator.tiles` on the NumPy backend (see there), into ``S``."""
    lay, m = op.layout, op.m
    dy, dh, rho, n_u = lay.dy, lay.dh, lay.rho, lay.n_u
    q = cols.size
    pos = -np.ones(lay.n, dtype=int)
    pos[cols] = np.arange(q)
    # small coordinates: u (d * dh + k) then b2; a sample's Jacobian on them is [delta_de O_ik | delta_de]
    small = np.concatenate([np.arange(n_u), n_u + dh * rho + np.arange(dy if lay.has_b2 else 0)])
    s_ok = pos[small] >= 0
    s_pos = pos[small][s_ok]
    row_of = -np.ones(q, dtype=int)  # position in keep -> row of the small rows' accumulator
    row_of[s_pos] = np.arange(s_pos.size)
    nu_pos = [pos[lay.nu_index(k)] for k in range(dh)]
    nu_ok = [p >= 0 for p in nu_pos]
    live = [k for k in range(dh) if nu_ok[k].any()]
    at = {k: _index(nu_pos[k][nu_ok[k]]) for k in live}  # where block k's columns go: a slice when contiguous
    route = {k: S.route(at[k]) for k in live}
    # the rows of the small coordinates, over all columns: few, accumulated here and placed once
    Srows = np.zeros((s_pos.size, q))
    W2 = op.W2
    WtW = W2.T @ W2
    n_s = small.size
    # an eighth of Xr (at least 2^16 floats) for a chunk's temporaries
    for rows in row_chunks(m, 2 * rho + dy * n_s + 2 * dh * dy, data_floats(m, rho, 1 << 16)):
        O, Xr, J, r = op.O[rows], op.Xr[rows], op.Jt[:, rows].T, op.r[rows]
        mc = O.shape[0]
        # HW[i, :, l] = H_i w_l (dy x dh per sample)
        HW = op.h_scalar * np.broadcast_to(W2, (mc, dy, dh)) if op.h_scalar is not None else op.Hl[rows] @ W2
        if s_ok.any():
            Srows[:, s_pos] += _small_block(op, rows, O, s_ok, n_s)
        for li, l in enumerate(live):
            Jl = J[:, l]
            # small x nu_l: sum_i (S_i' g_il) xr_i', g_il = H_i w_l J_il
            if s_ok.any():
                g = HW[:, :, l] * Jl[:, None]  # (mc, dy)
                T = np.concatenate([(g[:, :, None] * O[:, None, :]).reshape(mc, n_u), g if lay.has_b2 else g[:, :0]],
                                   axis=1)[:, s_ok]
                blk = T.T @ Xr
                Srows[:, at[l]] += blk[:, nu_ok[l]]
            # nu_k x nu_l for k <= l, on the rows where c_kl is nonzero
            for k in live[: li + 1]:
                if op.h_scalar is not None:
                    c = (op.h_scalar * WtW[k, l]) * (Jl * J[:, k])
                else:
                    c = Jl * J[:, k] * (HW[:, :, l] @ W2[:, k])
                nz = c != 0
                if not nz.any():
                    continue
                Xs, cs = (Xr, c) if nz.all() else (Xr[nz], c[nz])
                blk = _weighted_gram(Xs, cs)
                if not (nu_ok[k].all() and nu_ok[l].all()):
                    blk = blk[np.ix_(nu_ok[k], nu_ok[l])]
                S.add(route[k], route[l], blk, symmetric=k == l)
        # cross term: d^2 f_id / d U[d, k] d Nu[k, :] = J_ik xr_i (times r_id)
        for k in live:
            E = (J[:, k, None] * r).T @ Xr  # (dy, rho)
            u = pos[lay.u_index(k)]
            for d in np.flatnonzero(u >= 0):
                Srows[row_of[u[d]], at[k]] += E[d, nu_ok[k]]
    if s_pos.size:
        small_route = S.route(s_pos)
        S.add(small_route, small_route, Srows[:, s_pos], symmetric=True)
        for k in live:
            S.add(small_route, route[k], Srows[:, at[k]], symmetric=False)
    S.finish(op.lam)


def _small_block(op: HessianOperator, rows: slice, O: np.ndarray, s_ok: np.ndarray, n_s: int) -> np.ndarray:
    """``sum_i S_i' H_i S_i`` over the chunk ``rows`` on the kept small coordinates (``u`` then ``b2``), a
    sample's Jacobian on them being ``S_i = [delta_de O_i | delta_de]`` (:func:`_gram_hessian`)."""
    lay = op.layout
    dy, dh, n_u = lay.dy, lay.dh, lay.n_u
    S = np.zeros((dy, O.shape[0], n_s))
    for d in range(dy):
        S[d, :, d * dh:(d + 1) * dh] = O
        if lay.has_b2:
            S[d, :, n_u + d] = 1.0
    S = S[:, :, s_ok]
    Hss = np.zeros((S.shape[2], S.shape[2]))
    for d in range(dy):
        for e in range(dy):
            w = op.h_scalar * (d == e) if op.h_scalar is not None else op.Hl[rows, d, e]
            if np.any(w):
                Hss += S[d].T @ (np.reshape(w, (-1, 1)) * S[e])
    return Hss


def _weighted_gram(X: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``X' diag(c) X``: a rank update (half the flops of a product) when the weights have one sign, on
    ``X`` itself when they are all equal (a ReLU and the squared loss, on the rows kept)."""
    if np.all(c == c[0]):
        return c[0] * (X.T @ X)
    sign = 1.0 if np.all(c >= 0) else -1.0 if np.all(c <= 0) else 0.0
    if sign:
        R = np.sqrt(sign * c)[:, None] * X
        return sign * (R.T @ R)
    return X.T @ (c[:, None] * X)


def _index(p: np.ndarray):
    """``p`` (increasing positions) as a slice when contiguous (a view, no fancy indexing), else itself."""
    if p.size and p[-1] - p[0] == p.size - 1:
        return slice(int(p[0]), int(p[-1]) + 1)
    return p


class TorchHessianOperator(HessianOperator):
    """The same products with PyTorch (float64) on ``device`` (a GPU when available): the data
    stay on the device, only ``theta`` and ``H theta`` cross. Needs the ``torch`` extra."""

    def __init__(self, *args, device: str | None = None, **kw):
        import torch

        self.xp = torch
        self.device = resolve_device(device)
        super().__init__(*args, **kw)

    def _to_backend(self, arr):
        if isinstance(arr, DeviceData) and arr.t.device == self.device:
            return arr.t  # the check's data, already on this device
        arr = np.asarray(dense(arr), dtype=np.float64)
        with warnings.catch_warnings():
            # the point's arrays are read-only; the operator only reads them, so sharing (CPU) is safe
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return self.xp.as_tensor(arr, device=self.device)

    def _from_backend(self, arr) -> np.ndarray:
        return arr.cpu().numpy()


def make_operator(backend: str, *args, **kw) -> HessianOperator:
    """``backend``: "numpy" or "torch" (``device`` keyword for the latter)."""
    if backend == "torch":
        return TorchHessianOperator(*args, **kw)
    kw.pop("device", None)
    return HessianOperator(*args, **kw)
