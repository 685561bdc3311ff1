"""An independent brute-force oracle for tiny DEEP networks sitting exactly on kinks (to a few ulps when
the weights were rescaled).

It decides ``descent`` (order 1 or 2), ``sosp`` or ``local_minimum`` by enumeration, from textbook
conditions only: no kink groups or orders, no multipliers ``kappa^+-`` and no chart, no ECQP/ICQP,
Schur complement or copositivity. It must not import ``sospcheck`` (nor torch): derivatives come from
its own second-order forward mode (value, gradient, Hessian of every unit), losses from ``oracle.py``.

Method (``M`` kink pairs ``j = (i, l, k)`` with ``N^l_ik == 0``, exact for integer data; the kink
gradients must be linearly independent, which every generated instance satisfies, or, with
``allow_dependent``, dependent only through relations that also hold for their Hessians in every piece:
then each piece is a polyhedral cone in a chart up to ``O(|d|^3)``, the multipliers ``mu`` below may be any
solution (the Lagrangian's Hessian is the same for all), and every step stays exact).

1. Pieces. For ``sigma in {-1, +1}^M`` the network with slope ``s_{sigma_j}`` frozen on pair ``j`` (and
   ``h'(N)`` elsewhere) is a polynomial ``f_sigma``; so are the pre-activations ``z_j``. Near the point
   ``R = f_sigma`` on ``{sigma_j z_j >= 0}``.
2. First order. Per piece one LP ``min grad f_sigma . eta`` over the linearised cone
   ``{sigma_j grad z_j . eta >= 0}`` and ``|eta|_inf <= 1``; negative: ``descent`` order 1.
3. Second order (first-order stationary), inside the allowed subspace (orbits and exactly flat directions
   removed). Every face ``tau in {-1, 0, +1}^M`` (``0`` = held on the kink surface; held pairs take
   ``sigma = +``): ``V`` = allowed directions with ``grad z_j . eta = 0`` for the held pairs. If
   ``grad f_sigma`` has a component in ``V`` the face's relative interior has no critical direction
   (skipped: its closure's critical directions belong to smaller faces). Otherwise the curves that stay
   on the held surfaces have second derivative ``eta' (Hess f_sigma - sum_held mu_j Hess z_j) eta``
   with ``grad f_sigma = sum_held mu_j grad z_j``; a negative (zero) eigenvector of its restriction to
   ``V`` inside the face's closed cone ``{tau_j grad z_j . eta >= 0}`` is a witness (LP), as in
   ``oracle.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import product

import numpy as np
from scipy.linalg import null_space, orth
from scipy.optimize import linprog

from oracle import _span_meets_cone, loss_terms

MAX_M = 7


@dataclass
class DeepOracleResult:
    verdict: str
    order: int | None
    witness: np.ndarray | None = None
    M: int = 0
    value: float | None = None
    face: tuple | None = None
    n_faces: int = 0
    dim_allowed: int | None = None


class DeepInstance:
    """``weights[l]`` (n_l x n_{l-1}), ``biases[l]`` (or None); parameters flattened in the order
    W1, b1, W2, b2, ... (row-major), like ``nn.Sequential.parameters()``."""

    def __init__(self, weights, biases, X, Y, s_plus=1.0, s_minus=0.0, weight_decay=0.0, loss="squared"):
        self.Ws = [np.atleast_2d(np.asarray(W, float)) for W in weights]
        self.bs = [None if b is None else np.asarray(b, float).reshape(-1) for b in biases]
        self.X = np.asarray(X, float).reshape(-1, self.Ws[0].shape[1])
        self.sp, self.sm, self.lam, self.loss = float(s_plus), float(s_minus), float(weight_decay), loss
        self.m = self.X.shape[0]
        self.D = len(self.Ws) - 1
        self.dy = self.Ws[-1].shape[0]
        Y = np.asarray(Y)
        self.Y = Y.reshape(self.m).astype(int) if loss == "cross_entropy" else Y.astype(float).reshape(self.m, self.dy)
        self.slices = []
        pos = 0
        for W, b in zip(self.Ws, self.bs):
            sw = (pos, W.shape)
            pos += W.size
            sb = None
            if b is not None:
                sb = pos
                pos += b.size
            self.slices.append((sw, sb))
        self.p = pos
        self.N = self._plain_forward(self.theta())[1]
        # exact zeros for integer data; rescaled (balanced) instances carry rounding of a few ulps
        self.pairs = [(int(i), l, int(k)) for l in range(self.D)
                      for i, k in np.argwhere(np.abs(self.N[l]) <= 1e-12 * (1.0 + np.abs(self.N[l]).max()))]
        self.M = len(self.pairs)

    def theta(self):
        return np.concatenate([a.ravel() for W, b in zip(self.Ws, self.bs) for a in ((W,) if b is None else (W, b))])

    def unpack(self, th):
        Ws, bs = [], []
        for (pw, shape), pb in self.slices:
            Ws.append(th[pw:pw + shape[0] * shape[1]].reshape(shape))
            bs.append(None if pb is None else th[pb:pb + shape[0]])
        return Ws, bs

    def _plain_forward(self, th, slopes=None):
        Ws, bs = self.unpack(th)
        a, Ns = self.X, []
        for l, (W, b) in enumerate(zip(Ws, bs)):
            N = a @ W.T + (0.0 if b is None else b)
            if l == self.D:
                return N, Ns
            Ns.append(N)
            a = (np.where(N > 0, self.sp, self.sm) if slopes is None else slopes[l]) * N

    def risk(self, v=None):
        """The TRUE risk at ``theta + v``."""
        th = self.theta() + (0.0 if v is None else v)
        out = self._plain_forward(th)[0]
        return float(loss_terms(self.loss, out, self.Y)[0].sum()) + 0.5 * self.lam * float(th @ th)

    def slopes(self, sigma):
        S = [np.where(N > 0, self.sp, self.sm).astype(float) for N in self.N]
        for (i, l, k), s in zip(self.pairs, sigma):
            S[l][i, k] = self.sp if s > 0 else self.sm
        return S

    def jets(self, sigma):
        """Per layer, (value, gradient, Hessian) of the pre-activations of the frozen network:
        shapes (m, n), (m, n, p), (m, n, p, p); the last layer is the output."""
        S = self.slopes(sigma)
        m, p = self.m, self.p
        a, ga, Ha = self.X, np.zeros((m, self.X.shape[1], p)), np.zeros((m, self.X.shape[1], p, p))
        out = []
        for l, (W, b) in enumerate(zip(self.Ws, self.bs)):
            (pw, shape), pb = self.slices[l]
            n, c = shape
            N = a @ W.T + (0.0 if b is None else b)
            gN = np.einsum("kc,icp->ikp", W, ga)
            HN = np.einsum("kc,icpq->ikpq", W, Ha)
            for k in range(n):
                for cc in range(c):
                    q = pw + k * c + cc
                    gN[:, k, q] += a[:, cc]
                    HN[:, k, q, :] += ga[:, cc, :]
                    HN[:, k, :, q] += ga[:, cc, :]
                if pb is not None:
                    gN[:, k, pb + k] += 1.0
            out.append((N, gN, HN))
            if l < self.D:
                s = S[l]
                a, ga, Ha = s * N, s[:, :, None] * gN, s[:, :, None, None] * HN
        return out

    def piece(self, sigma):
        """Gradient and Hessian of ``f_sigma``, and gradients / Hessians of the kink pre-activations."""
        jets = self.jets(sigma)
        out, gout, Hout = jets[-1]
        _, r, Hl = loss_terms(self.loss, out, self.Y)
        th = self.theta()
        g = np.einsum("icp,ic->p", gout, r) + self.lam * th
        H = (np.einsum("icp,icd,idq->pq", gout, Hl, gout) + np.einsum("ic,icpq->pq", r, Hout)
             + self.lam * np.eye(self.p))
        Gz = np.array([jets[l][1][i, k] for (i, l, k) in self.pairs]).reshape(self.M, self.p)
        Hz = np.array([jets[l][2][i, k] for (i, l, k) in self.pairs]).reshape(self.M, self.p, self.p)
        return g, 0.5 * (H + H.T), Gz, Hz


def allowed_basis(inst: DeepInstance, tol: float = 1e-10) -> np.ndarray:
    """Orthonormal basis of the directions left after removing, without weight decay: every hidden unit's
    rescaling orbit tangent; dead units (ReLU, negative on every point): row and outgoing column; in
    layer 1 the row directions that move no point where the unit is active or on its kink (ReLU), or no
    point at all (leaky); in higher layers (ReLU) the single weights from an input unit that is strictly
    negative at every point where the receiving unit is active or on its kink (that input stays 0); and
    for a unit that is linear on all points (no kink, one side, nonzero slope) with biases here and in the
    next layer, its bias shift compensated by the next bias (``-slope * W_next[:, k]``)."""
    p = inst.p
    if inst.lam > 0:
        return np.eye(p)
    rem = []
    for l in range(inst.D):
        (pw, (n, c)), pb = inst.slices[l]
        (pw2, (n2, _)), _ = inst.slices[l + 1]
        for k in range(n):
            row = list(range(pw + k * c, pw + (k + 1) * c)) + ([pb + k] if pb is not None else [])
            col = [pw2 + v * n + k for v in range(n2)]
            Nk = inst.N[l][:, k]
            if inst.sm == 0 and np.all(Nk < 0):
                for q in row + col:
                    e = np.zeros(p)
                    e[q] = 1.0
                    rem.append(e)
                continue
            t = np.zeros(p)
            t[row] = np.append(inst.Ws[l][k], inst.bs[l][k]) if pb is not None else inst.Ws[l][k]
            t[col] = -inst.Ws[l + 1][:, k]
            rem.append(t)
            on_kink = np.abs(Nk) <= 1e-12 * (1.0 + np.abs(inst.N[l]).max())
            side = np.sign(Nk)
            slope = inst.sp if np.all(side > 0) else (inst.sm if np.all(side < 0) else 0.0)
            if slope and not on_kink.any() and pb is not None and inst.slices[l + 1][1] is not None:
                t = np.zeros(p)
                t[pb + k] = 1.0
                pb2 = inst.slices[l + 1][1]
                t[pb2:pb2 + n2] = -slope * inst.Ws[l + 1][:, k]
                rem.append(t)
            if l > 0 and inst.sm == 0:
                act = Nk >= 0
                prev = inst.N[l - 1]
                for u in range(c):
                    if np.all(prev[act, u] < 0):
                        e = np.zeros(p)
                        e[pw + k * c + u] = 1.0
                        rem.append(e)
            if l == 0:
                Xb = np.hstack([inst.X, np.ones((inst.m, 1))]) if pb is not None else inst.X
                pts = Xb[Nk >= 0] if inst.sm == 0 else Xb
                B = null_space(pts) if len(pts) else np.eye(Xb.shape[1])
                for v in B.T:
                    e = np.zeros(p)
                    e[row] = v
                    rem.append(e)
    if not rem:
        return np.eye(p)
    R = orth(np.array(rem).T, rcond=tol)
    return null_space(R.T) if R.shape[1] else np.eye(p)


def likq_rank(inst: DeepInstance) -> int:
    if inst.M == 0:
        return 0
    return int(np.linalg.matrix_rank(inst.piece([1] * inst.M)[2], tol=1e-9))


def relation_residual(Gz: np.ndarray, Hz: np.ndarray, tol: float = 1e-9) -> float:
    """Largest ``|sum_j c_j Hz_j| / max_j |Hz_j|`` (Frobenius) over the unit relations ``c' Gz = 0`` between the
    unit-scaled kink gradients: 0 when every relation between the kink pre-activations that holds to first order
    also holds to second order."""
    n = np.linalg.norm(Gz, axis=1)
    zero = n <= tol * max(n.max(initial=0.0), 1e-300)
    w = 1.0 / np.where(zero, 1.0, n)
    U, s, _ = np.linalg.svd(Gz * w[:, None], full_matrices=True)
    rank = int(np.sum(s > tol * s[0])) if s.size and s[0] > 0 else 0
    den = max((wj * np.linalg.norm(H) for wj, H in zip(w, Hz)), default=0.0)
    if den == 0:
        return 0.0
    return max((float(np.linalg.norm(np.einsum("j,jpq->pq", c * w, Hz))) / den for c in U[:, rank:].T), default=0.0)


def dependent_ok(inst: DeepInstance, tol: float = 1e-7, piece=None) -> bool:
    """Every piece's kink relations hold to second order (:func:`relation_residual` <= ``tol``): then near the point
    each piece is, up to ``O(|d|^3)``, a polyhedral cone in the chart of a basis of its kinks, and the face
    enumeration below stays exact."""
    piece = piece or inst.piece
    return all(relation_residual(*[piece(sigma)[k] for k in (2, 3)]) <= tol
               for sigma in product((1, -1), repeat=inst.M))


def deep_oracle(inst: DeepInstance, tol: float = 1e-8, allow_dependent: bool = False) -> DeepOracleResult:
    """``allow_dependent``: accept linearly dependent kink gradients when :func:`dependent_ok` (else refused)."""
    M = inst.M
    if M > MAX_M:
        raise ValueError(f"deep oracle limited to M <= {MAX_M} kinks, got {M}")
    piece = lru_cache(maxsize=None)(inst.piece)  # sigma tuples: every piece computed once
    if likq_rank(inst) < M:
        if not allow_dependent:
            raise ValueError("the kink gradients are linearly dependent: the deep oracle needs them independent")
        if not dependent_ok(inst, piece=lambda sigma: piece(tuple(sigma))):
            raise ValueError("the kink gradients are linearly dependent and their relations fail at second order")

    for sigma in product((1, -1), repeat=M):
        g, _, Gz, _ = piece(sigma)
        kw = dict(A_ub=-(np.array(sigma, float)[:, None] * Gz), b_ub=np.zeros(M)) if M else {}
        res = linprog(g, bounds=[(-1, 1)] * inst.p, method="highs", **kw)
        if res.status != 0:
            raise RuntimeError(f"first-order LP failed: {res.message}")
        if res.fun < -tol * max(1.0, np.abs(g).max()):
            return DeepOracleResult("descent", 1, res.x, M, float(res.fun))
    A = allowed_basis(inst)
    base = dict(M=M, dim_allowed=A.shape[1])
    zero, n_faces = None, 0
    for tau in product((0, 1, -1), repeat=M):
        sigma = tuple(t if t else 1 for t in tau)
        g, H, Gz, Hz = piece(sigma)
        held = [j for j, t in enumerate(tau) if t == 0]
        free = [j for j, t in enumerate(tau) if t != 0]
        V = null_space(Gz[held] @ A) if held else np.eye(A.shape[1])
        V = A @ V
        n_faces += 1
        if V.shape[1] == 0:
            continue
        gscale = max(1.0, np.abs(g).max())
        if np.linalg.norm(V.T @ g) > tol * gscale:
            continue
        mu = np.linalg.lstsq(Gz[held].T, g, rcond=None)[0] if held else np.zeros(0)
        HL = H - np.einsum("j,jpq->pq", mu, Hz[held]) if held else H
        HV = V.T @ HL @ V
        lam, U = np.linalg.eigh(0.5 * (HV + HV.T))
        hscale = max(1.0, np.abs(HL).max())
        G = np.array([tau[j] for j in free], float)[:, None] * (Gz[free] @ V) if free else np.zeros((0, V.shape[1]))
        neg = U[:, lam < -tol * hscale]
        c, _ = _span_meets_cone(neg, G)
        if c is not None:
            y = neg @ c
            eta = V @ y
            return DeepOracleResult("descent", 2, eta, value=float(y @ HV @ y / (y @ y)), face=tau, n_faces=n_faces,
                                    **base)
        if zero is None:
            zs = U[:, np.abs(lam) <= tol * hscale]
            c, _ = _span_meets_cone(zs, G)
            if c is not None:
                zero = (V @ (zs @ c), tau)
    if zero is not None:
        return DeepOracleResult("sosp", None, zero[0], face=zero[1], n_faces=n_faces, **base)
    return DeepOracleResult("local_minimum", None, None, n_faces=n_faces, **base)


def curve_lowers_risk(inst: DeepInstance, eta: np.ndarray, face: tuple, steps=range(2, 30)) -> bool:
    """The second-order witness on its face, followed along the curve that keeps the held kinks on their
    surfaces to second order, lowers the TRUE risk at some small step."""
    sigma = tuple(t if t else 1 for t in face)
    g, H, Gz, Hz = inst.piece(sigma)
    held = [j for j, t in enumerate(face) if t == 0]
    zeta = np.zeros(inst.p)
    if held:
        q = np.einsum("p,jpq,q->j", eta, Hz[held], eta)
        zeta = -np.linalg.lstsq(Gz[held], q, rcond=None)[0]
    R0 = inst.risk()
    n = np.linalg.norm(eta)
    eta, zeta = eta / n, zeta / n**2
    return any(inst.risk(2.0**-e * eta + 0.5 * 4.0**-e * zeta) < R0 - 1e-13 * max(1.0, abs(R0)) for e in steps)
