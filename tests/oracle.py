"""An independent brute-force oracle for tiny instances, written without the SOSP-CHECK reductions.

It enumerates every sign region of the boundary pairs. In region ``sigma`` the network is a smooth
(bilinear) function of the weights with the kink slopes frozen, so the risk has an exact gradient
``g_sigma`` and Hessian ``H_sigma``, assembled here from explicit Jacobians. Then

- first order: one LP per region, ``min g_sigma . eta`` over the region's cone and a box;
- second order: is ``eta' H_sigma eta`` negative (or zero) somewhere on the region's critical cone
  ``{sigma t >= 0, g_sigma . eta = 0}`` (within the allowed subspace: orthogonal to the rescaling
  orbits and to the exactly flat directions)? Decided by face enumeration: a minimiser of the
  Rayleigh quotient over a polyhedral cone, with active set F, minimises it over the subspace
  ``V_F`` too, so it lies in the span of the negative (resp. zero) eigenvectors of ``H`` on
  ``V_F``; an LP then tests whether that span meets the rest of the cone. Faces are visited as
  ``tau in {-1, 0, +1}^M`` (0 = held at the kink), 3^M of them.

No BVLS, no extreme rays, no ECQP/ICQP, no copositivity: only the definitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
from scipy.linalg import null_space
from scipy.optimize import linprog


@dataclass
class OracleResult:
    verdict: str  # descent | sosp | local_minimum
    order: int | None
    witness: np.ndarray | None
    n_regions: int
    M: int


def _loss_derivs(loss, out, Y):
    if loss == "squared":
        return out - Y, np.broadcast_to(np.eye(out.shape[1]), (out.shape[0],) + (out.shape[1],) * 2)
    raise ValueError(loss)


class Instance:
    """The weights as one vector ``theta = [W1, b1?, W2, b2?]`` and the smooth piece of each region."""

    def __init__(self, W1, b1, W2, b2, X, Y, s_plus=1.0, s_minus=0.0, weight_decay=0.0):
        self.W1, self.W2 = np.asarray(W1, float), np.asarray(W2, float)
        self.b1 = None if b1 is None else np.asarray(b1, float)
        self.b2 = None if b2 is None else np.asarray(b2, float)
        self.X, self.Y = np.asarray(X, float), np.asarray(Y, float).reshape(len(X), -1)
        self.sp, self.sm, self.lam = s_plus, s_minus, weight_decay
        self.dh, self.dx = self.W1.shape
        self.dy = self.W2.shape[0]
        self.Xb = np.hstack([self.X, np.ones((len(X), 1))]) if self.b1 is not None else self.X
        self.Z = np.hstack([self.W1, self.b1[:, None]]) if self.b1 is not None else self.W1
        self.d = self.Z.shape[1]
        self.N = self.Xb @ self.Z.T
        self.pairs = [tuple(p) for p in np.argwhere(self.N == 0)]  # (i, k)
        # coordinates: Z (dh x d) then W2 (dy x dh) then b2
        self.nZ, self.nW = self.dh * self.d, self.dy * self.dh
        self.p = self.nZ + self.nW + (self.dy if self.b2 is not None else 0)

    def theta(self):
        parts = [self.Z.ravel(), self.W2.ravel()] + ([self.b2] if self.b2 is not None else [])
        return np.concatenate(parts)

    def split(self, v):
        dZ = v[: self.nZ].reshape(self.dh, self.d)
        dW2 = v[self.nZ: self.nZ + self.nW].reshape(self.dy, self.dh)
        db2 = v[self.nZ + self.nW:] if self.b2 is not None else None
        return dZ, dW2, db2

    def risk(self, v=None):
        """The true risk at ``theta + v`` (real activation, no frozen slopes)."""
        dZ, dW2, db2 = self.split(np.zeros(self.p) if v is None else v)
        Z, W2 = self.Z + dZ, self.W2 + dW2
        N = self.Xb @ Z.T
        out = np.where(N > 0, self.sp * N, self.sm * N) @ W2.T
        if self.b2 is not None:
            out = out + self.b2 + db2
        val = 0.5 * np.sum((out - self.Y) ** 2)
        return val + 0.5 * self.lam * np.sum((self.theta() + (0 if v is None else v)) ** 2)

    def slopes(self, signs):
        """``J_ik``: h'(N) off the kinks, ``s_sigma`` on boundary pair j."""
        J = np.where(self.N > 0, self.sp, self.sm).astype(float)
        for (i, k), s in zip(self.pairs, signs):
            J[i, k] = self.sp if s > 0 else self.sm
        return J

    def piece(self, signs):
        """Gradient and Hessian at theta of the smooth piece with slopes frozen by ``signs``."""
        J = self.slopes(signs)
        m, p = len(self.X), self.p
        out = (J * self.N) @ self.W2.T + (self.b2 if self.b2 is not None else 0)
        r, Hl = _loss_derivs("squared", out, self.Y)
        Jac = np.zeros((m, self.dy, p))
        D2 = np.zeros((self.dy, p, p))  # second derivatives of out_ic, the same form for every i up to x
        g = self.lam * self.theta()
        H = self.lam * np.eye(p)
        for i in range(m):
            Ji = np.zeros((self.dy, p))
            for k in range(self.dh):
                zk = slice(k * self.d, (k + 1) * self.d)
                Ji[:, zk] = np.outer(self.W2[:, k], J[i, k] * self.Xb[i])
                for c in range(self.dy):
                    Ji[c, self.nZ + c * self.dh + k] = J[i, k] * self.N[i, k]
            if self.b2 is not None:
                Ji[:, self.nZ + self.nW:] = np.eye(self.dy)
            Jac[i] = Ji
            g = g + Ji.T @ r[i]
            H = H + Ji.T @ Hl[i] @ Ji
            for c in range(self.dy):  # d^2 out_ic / dW2[c,k] dZ[k,:] = J_ik xbar_i
                if r[i, c] == 0:
                    continue
                for k in range(self.dh):
                    w = self.nZ + c * self.dh + k
                    zk = slice(k * self.d, (k + 1) * self.d)
                    H[w, zk] += r[i, c] * J[i, k] * self.Xb[i]
                    H[zk, w] += r[i, c] * J[i, k] * self.Xb[i]
        return g, H, r

    def t_rows(self):
        """Row j maps theta to t_{i_j k_j} = dZ_k . xbar_i."""
        T = np.zeros((len(self.pairs), self.p))
        for j, (i, k) in enumerate(self.pairs):
            T[j, k * self.d: (k + 1) * self.d] = self.Xb[i]
        return T


def allowed_subspace(inst: Instance, r: np.ndarray, tol: float) -> np.ndarray:
    """Rows of equalities defining the second-order directions (symmetry and exactly flat blocks)."""
    if inst.lam:
        return np.zeros((0, inst.p))
    rows = []
    span_null = null_space(inst.Xb)  # directions of Z_k no data point sees
    for k in range(inst.dh):
        zk = np.arange(k * inst.d, (k + 1) * inst.d)
        wk = inst.nZ + np.arange(inst.dy) * inst.dh + k
        for n in span_null.T:
            row = np.zeros(inst.p)
            row[zk] = n
            rows.append(row)
        dead = inst.sm == 0 and np.all(inst.N[:, k] < 0)
        zero_out = np.all(inst.W2[:, k] == 0)
        flat_v = False
        if zero_out and not dead:
            # g == 0 identically iff sum_i J_ik(sigma) r_i xbar_i' vanishes on the data span, every region
            P = np.eye(inst.d) - span_null @ span_null.T
            kp = [j for j, (i, kk) in enumerate(inst.pairs) if kk == k]
            flat_v = True
            for signs in product((1, -1), repeat=len(kp)):
                full = np.ones(len(inst.pairs))
                full[kp] = signs
                J = inst.slopes(full)
                E = (r * J[:, [k]]).T @ inst.Xb
                if np.abs(E @ P).max() > tol:
                    flat_v = False
                    break
        if dead:
            for idx in np.concatenate([zk, wk]):
                row = np.zeros(inst.p)
                row[idx] = 1
                rows.append(row)
        elif flat_v:
            for idx in zk:
                row = np.zeros(inst.p)
                row[idx] = 1
                rows.append(row)
        else:
            row = np.zeros(inst.p)
            row[wk] = -inst.W2[:, k]
            row[zk] = inst.Z[k]
            rows.append(row)
    return np.array(rows) if rows else np.zeros((0, inst.p))


def _cone_meets_span(E: np.ndarray, G: np.ndarray) -> np.ndarray | None:
    """A nonzero ``y = E c`` with ``G y >= 0``, or None (E: orthonormal columns)."""
    if E.shape[1] == 0:
        return None
    if G.shape[0] == 0:
        return E[:, 0]
    A = G @ E
    nz = null_space(A) if A.size else np.eye(E.shape[1])
    if nz.shape[1]:
        return E @ nz[:, 0]
    q = E.shape[1]
    res = linprog(-A.sum(axis=0), A_ub=-A, b_ub=np.zeros(A.shape[0]), bounds=[(-1, 1)] * q, method="highs")
    if res.status == 0 and -res.fun > 1e-9:
        return E @ res.x
    return None


def oracle_check(W1, b1, W2, b2, X, Y, s_plus=1.0, s_minus=0.0, weight_decay=0.0, tol=1e-8) -> OracleResult:
    inst = Instance(W1, b1, W2, b2, X, Y, s_plus, s_minus, weight_decay)
    M = len(inst.pairs)
    if M > 10:
        raise ValueError(f"oracle limited to M <= 10 boundary pairs, got {M}")
    T = inst.t_rows()
    pieces = {}

    def piece(signs):
        key = tuple(int(s) for s in signs)
        if key not in pieces:
            pieces[key] = inst.piece(key)
        return pieces[key]

    # first order: every full-dimensional region
    for sigma in product((1, -1), repeat=M):
        g, _, _ = piece(sigma)
        scale = max(1.0, np.abs(g).max())
        A_ub = -(np.array(sigma)[:, None] * T) if M else None
        res = linprog(g, A_ub=A_ub, b_ub=np.zeros(M) if M else None, bounds=[(-1, 1)] * inst.p, method="highs")
        if res.fun < -tol * scale:
            return OracleResult("descent", 1, res.x, 2**M, M)

    # second order: faces tau in {-1, 0, +1}^M of every region's critical cone
    r = piece((1,) * M)[2]
    S_rows = allowed_subspace(inst, r, tol)
    zero_found = None
    for tau in product((1, 0, -1), repeat=M):
        sigma = tuple(t if t else 1 for t in tau)
        g, H, _ = piece(sigma)
        scale = max(1.0, np.abs(H).max())
        held = [j for j, t in enumerate(tau) if t == 0]
        free = [j for j, t in enumerate(tau) if t != 0]
        rows = [S_rows, T[held], g[None, :]]
        Vb = null_space(np.vstack(rows))
        if Vb.shape[1] == 0:
            continue
        lam, U = np.linalg.eigh(Vb.T @ H @ Vb)
        G = np.array(tau)[free][:, None] * T[free]
        neg = Vb @ U[:, lam < -tol * scale]
        y = _cone_meets_span(np.linalg.qr(neg)[0] if neg.shape[1] else neg, G)
        if y is not None:
            return OracleResult("descent", 2, y, 2**M, M)
        if zero_found is None:
            zer = Vb @ U[:, np.abs(lam) <= tol * scale]
            zero_found = _cone_meets_span(np.linalg.qr(zer)[0] if zer.shape[1] else zer, G)
    if zero_found is not None:
        return OracleResult("sosp", None, zero_found, 2**M, M)
    return OracleResult("local_minimum", None, None, 2**M, M)
