"""An independent brute-force oracle for tiny networks sitting exactly on kinks.

It decides ``descent`` (order 1 or 2), ``sosp`` or ``local_minimum`` from the definitions only: no
per-neuron BVLS, no extreme rays, no ECQP/ICQP, no Schur complement or copositivity test. It must
not import ``sospcheck``; the loss value / gradient / Hessian are written out again here.

Method (``M`` = number of boundary pairs ``(i, k)`` with ``N_ik == 0``, exact for integer data).

1. Regions. For every ``sigma in {-1, +1}^M`` the closed cone ``C_sigma = {eta : sigma_j t_j >= 0}``
   (``t_j = v_k . xbar_i`` for pair ``j = (i, k)``). For small ``eta`` in ``C_sigma`` the network is
   *exactly* the smooth (bilinear in ``(W2, Z)``) network whose activation slope is frozen to
   ``J_ik = h'(N_ik)`` off the boundary and ``J_ik = s_{sigma_j}`` on pair ``j``. Its risk has an exact
   gradient ``g_sigma`` and Hessian ``H_sigma``, assembled from the dense output Jacobian
   (``m x dy x p``) and the dense second-derivative tensor of the output (``m x dy x p x p``), plus
   ``lam * theta`` / ``lam * I`` for weight decay.
2. First order. Per region one LP ``min g_sigma . eta`` over ``C_sigma`` and the box ``|eta| <= 1``.
   Optimum ``< -tol * max(1, |g_sigma|_inf)``: ``descent``, order 1 (the LP solution is the witness).
3. Second order, inside the allowed subspace ``S`` (see :func:`allowed_basis`): is
   ``eta' H_sigma eta`` negative (resp. zero) for some nonzero ``eta`` of some critical cone
   ``P_sigma = {eta in S : sigma t >= 0, g_sigma . eta = 0}``? Decided exactly by face enumeration:
   a minimiser of the Rayleigh quotient over ``P_sigma``, with active set ``F``, is a local minimiser
   of the Rayleigh quotient on ``V_F = {eta in S : t_F = 0, g_sigma . eta = 0}``, hence an
   eigenvector of ``H`` restricted to ``V_F`` with the (negative, resp. zero) minimal eigenvalue.
   Conversely every nonzero vector of the span ``E`` of those eigenvectors that satisfies the
   remaining inequalities is a witness. So for every face we test, by a null space and an LP, whether
   ``E`` meets ``{sigma_j t_j >= 0, j not in F}`` in a nonzero vector. On a face with ``t_j = 0``
   neither ``g`` nor the quadratic form depend on ``sigma_j``, so the faces are enumerated once as
   ``tau in {-1, 0, +1}^M`` (0 = held at the kink): ``3^M`` faces.

Scales (all thresholds relative, ``tol`` is the only knob):
- first-order LP value: ``tol * max(1, max|g_sigma|)`` (``|eta|_inf <= 1``); the same threshold on
  ``max|Q' g_sigma|`` says the row ``g_sigma . eta = 0`` is void (float instances: rounding noise);
- eigenvalues of ``H`` on a face: ``tol * max(1, max|H_sigma|)`` (orthonormal bases, so the
  eigenvalues of the restriction are bounded by ``||H||``);
- the LP "does span E meet the cone": optimum of ``sum_j (G E c)_j`` over ``G E c >= 0``,
  ``|c|_inf <= 1`` must exceed ``LP_POS * max(1, max|G E|)`` with ``LP_POS = 1e-6`` (well above HiGHS'
  1e-7 feasibility tolerance; instances are integer so genuine optima are O(0.01..1));
- "exactly flat" tests of :func:`allowed_basis`: ``tol * max(1, max|r| * max|xbar|)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

import numpy as np
from scipy.linalg import null_space, orth
from scipy.optimize import linprog
from scipy.special import expit

LOSSES = ("squared", "logistic", "cross_entropy")
LP_POS = 1e-6
MAX_M = 10


@dataclass
class OracleResult:
    verdict: str  # "descent" | "sosp" | "local_minimum"
    order: int | None  # 1 or 2 for descent, else None
    witness: np.ndarray | None = None  # full parameter vector [vec Z, vec W2, b2] (descent: lowers R)
    n_regions: int = 0  # 2^M
    M: int = 0
    region: tuple | None = None  # sigma of the deciding region (descent-1)
    face: tuple | None = None  # tau of the deciding face (descent-2 / sosp)
    value: float | None = None  # LP optimum (order 1) or witness curvature y'Hy / |y|^2 (order 2, sosp)
    n_faces: int = 0  # faces visited
    n_lps: int = 0
    dim_S: int | None = None  # dimension of the allowed second-order subspace
    L: int | None = None  # pairs with a flat ray (computed when first-order stationary)
    K: int | None = None  # pairs with w_k . r_i == 0 (computed when first-order stationary)
    removed: dict = field(default_factory=dict)  # what allowed_basis removed (dead, flat_v, null_dims)


# ----------------------------------------------------------------------------------------- losses
def loss_terms(loss: str, out: np.ndarray, Y: np.ndarray):
    """Per-sample values (m,), gradients ``r`` (m, dy) and Hessians (m, dy, dy) w.r.t. the output."""
    m, dy = out.shape
    if loss == "squared":
        d = out - Y
        return 0.5 * np.sum(d * d, axis=1), d, np.tile(np.eye(dy), (m, 1, 1))
    if loss == "logistic":
        if dy != 1:
            raise ValueError("logistic loss needs dy == 1")
        y = Y.reshape(m)
        z = y * out[:, 0]
        val = np.logaddexp(0.0, -z)
        sn = expit(-z)
        return val, (-y * sn)[:, None], (expit(z) * sn)[:, None, None]
    if loss == "cross_entropy":
        y = Y.reshape(m).astype(int)
        sh = out - out.max(axis=1, keepdims=True)
        e = np.exp(sh)
        P = e / e.sum(axis=1, keepdims=True)
        val = np.log(e.sum(axis=1)) - sh[np.arange(m), y]
        r = P.copy()
        r[np.arange(m), y] -= 1.0
        Hl = np.einsum("ic,cd->icd", P, np.eye(dy)) - np.einsum("ic,id->icd", P, P)
        return val, r, Hl
    raise ValueError(f"unknown loss {loss!r}")


def _prepare_targets(loss, Y, m, dy):
    Y = np.asarray(Y)
    if loss == "cross_entropy":
        return Y.reshape(m).astype(int)
    return Y.astype(float).reshape(m, dy)


# --------------------------------------------------------------------------------------- instance
class Instance:
    """Weights as one vector ``theta = [vec Z (row-major, Z = [W1 b1]), vec W2 (row-major), b2]``.

    ``b1 = None`` / ``b2 = None``: a network without that parameter (``xbar_i = x_i``, no b2 block).
    """

    def __init__(self, W1, b1, W2, b2, X, Y, s_plus=1.0, s_minus=0.0, weight_decay=0.0, loss="squared"):
        self.W1 = np.atleast_2d(np.asarray(W1, float))
        self.W2 = np.atleast_2d(np.asarray(W2, float))
        self.b1 = None if b1 is None else np.asarray(b1, float).reshape(-1)
        self.b2 = None if b2 is None else np.asarray(b2, float).reshape(-1)
        self.X = np.asarray(X, float).reshape(-1, self.W1.shape[1])
        self.sp, self.sm, self.lam, self.loss = float(s_plus), float(s_minus), float(weight_decay), loss
        self.m = len(self.X)
        self.dh, self.dx = self.W1.shape
        self.dy = self.W2.shape[0]
        self.Y = _prepare_targets(loss, Y, self.m, self.dy)
        self.Xb = np.hstack([self.X, np.ones((self.m, 1))]) if self.b1 is not None else self.X.copy()
        self.Z = np.hstack([self.W1, self.b1[:, None]]) if self.b1 is not None else self.W1.copy()
        self.d = self.Z.shape[1]
        self.N = self.Xb @ self.Z.T
        self.pairs = [(int(i), int(k)) for i, k in np.argwhere(self.N == 0)]  # row-major: by i then k
        self.M = len(self.pairs)
        self.nZ, self.nW = self.dh * self.d, self.dy * self.dh
        self.p = self.nZ + self.nW + (self.dy if self.b2 is not None else 0)

    # indices into theta
    def iZ(self, k):
        return np.arange(k * self.d, (k + 1) * self.d)

    def iW(self, c, k):
        return self.nZ + c * self.dh + k

    def iu(self, k):
        return self.nZ + np.arange(self.dy) * self.dh + k

    def ib2(self):
        return np.arange(self.nZ + self.nW, self.p)

    def theta(self):
        parts = [self.Z.ravel(), self.W2.ravel()] + ([self.b2] if self.b2 is not None else [])
        return np.concatenate(parts)

    def split(self, v):
        v = np.asarray(v, float)
        dZ = v[: self.nZ].reshape(self.dh, self.d)
        dW2 = v[self.nZ: self.nZ + self.nW].reshape(self.dy, self.dh)
        db2 = v[self.nZ + self.nW:] if self.b2 is not None else None
        return dZ, dW2, db2

    def _risk(self, v, J):
        dZ, dW2, db2 = self.split(np.zeros(self.p) if v is None else v)
        Z, W2 = self.Z + dZ, self.W2 + dW2
        N = self.Xb @ Z.T
        A = np.where(N > 0, self.sp, self.sm) * N if J is None else J * N
        out = A @ W2.T
        if self.b2 is not None:
            out = out + self.b2 + db2
        val = loss_terms(self.loss, out, self.Y)[0].sum()
        th = self.theta() + (0.0 if v is None else v)
        return val + 0.5 * self.lam * float(th @ th)

    def risk(self, v=None):
        """The TRUE risk at ``theta + v`` (the real piecewise-linear activation)."""
        return self._risk(v, None)

    def piece_risk(self, sigma, v=None):
        """Risk of the smooth piece of region ``sigma`` (slopes frozen) at ``theta + v``."""
        return self._risk(v, self.slopes(sigma))

    def slopes(self, sigma):
        """``J`` (m x dh): h'(N_ik) off the boundary, ``s_{sigma_j}`` on boundary pair j."""
        J = np.where(self.N > 0, self.sp, self.sm).astype(float)
        for (i, k), s in zip(self.pairs, sigma):
            J[i, k] = self.sp if s > 0 else self.sm
        return J

    def outputs(self):
        O = np.where(self.N > 0, self.sp, self.sm) * self.N
        return O @ self.W2.T + (self.b2 if self.b2 is not None else 0.0)

    def residuals(self):
        """``r_i = grad l_i`` at the current outputs (the same in every region: N = 0 on the boundary)."""
        return loss_terms(self.loss, self.outputs(), self.Y)[1]

    def piece(self, sigma):
        """Exact gradient and Hessian at theta of the smooth piece of region ``sigma``."""
        J = self.slopes(sigma)
        m, dy, p, d = self.m, self.dy, self.p, self.d
        A = J * self.N  # activations; on the boundary N = 0
        out = A @ self.W2.T + (self.b2 if self.b2 is not None else 0.0)
        _, r, Hl = loss_terms(self.loss, out, self.Y)
        Jac = np.zeros((m, dy, p))  # d out_ic / d theta
        D2 = np.zeros((m, dy, p, p))  # d^2 out_ic / d theta^2 (only the W2[c,k] x Z_k blocks)
        for k in range(self.dh):
            zk = self.iZ(k)
            Jx = J[:, k][:, None] * self.Xb  # (m, d): J_ik xbar_i
            Jac[:, :, zk] = self.W2[:, k][None, :, None] * Jx[:, None, :]
            for c in range(dy):
                w = self.iW(c, k)
                Jac[:, c, w] = A[:, k]
                D2[:, c, w, zk] = Jx
                D2[:, c, zk, w] = Jx
        if self.b2 is not None:
            Jac[:, :, self.ib2()] = np.eye(dy)[None]
        th = self.theta()
        g = np.einsum("icp,ic->p", Jac, r) + self.lam * th
        H = (np.einsum("icp,icd,idq->pq", Jac, Hl, Jac) + np.einsum("ic,icpq->pq", r, D2)
             + self.lam * np.eye(p))
        return g, 0.5 * (H + H.T), r

    def t_rows(self):
        """Row j maps eta to ``t_j = v_k . xbar_i`` for boundary pair ``j = (i, k)``."""
        T = np.zeros((self.M, self.p))
        for j, (i, k) in enumerate(self.pairs):
            T[j, self.iZ(k)] = self.Xb[i]
        return T


# ------------------------------------------------------------------------------ allowed subspace
def allowed_basis(inst: Instance, tol: float = 1e-8, extra_rows: np.ndarray | None = None, no_shift=()):
    """Orthonormal basis (p x q) of the allowed second-order directions S, and what was removed.

    ``extra_rows`` (rows in theta coordinates): further slice rows, e.g. the flat directions shared by
    several neurons that a checker claims; ``no_shift``: neurons whose bias-shift row (d) those rows
    replace. Without them the oracle quotients nothing shared, so it can only report ``sosp`` where
    such directions are flat.

    weight_decay > 0: S = everything. Otherwise, starting from all coordinates:
    (a) v_k is restricted to the row space of Xbar (other components change no t_ik), and for a
        ReLU (s_minus = 0) to the span of the points with N_ik >= 0 (the others stay inactive);
    (b) dead neuron (s_minus == 0 and N_ik < 0 for all i): the whole (u_k, v_k) block goes;
    (c) w_k == 0 and ``E_k(sigma) = sum_i J_ik(sigma) r_i xbar_i'`` vanishes on the row space of
        Xbar for every realizable sign pattern of neuron k's boundary pairs (some ``v`` with
        ``sigma_i xbar_i . v > 0``, one LP each: dependent ``xbar_i`` rule some patterns out): v_k goes
        (it then enters neither g, H nor any other block);
    then the symmetry rows ``-w_k . u_k + Z_k . v_k = 0`` of the surviving neurons with v_k kept,
    and (d) for a neuron that is affine on the data (no boundary pair, one slope > 0) when b2 is a
    parameter and some c has ``Xbar c = 1``: moving z_k by t c and b2 by -t s w_k keeps every
    output, here and nearby, so the slice row ``c . v_k = 0`` is added.
    """
    p = inst.p
    info = {"dead": [], "flat_v": [], "null_dims": 0}
    if inst.lam > 0:
        return np.eye(p), info
    R = orth(inst.Xb.T)  # d x rank: row space of Xbar
    info["null_dims"] = inst.d - R.shape[1]
    r = inst.residuals()
    scale = max(1.0, np.abs(r).max() * np.abs(inst.Xb).max()) if inst.m else 1.0
    cols, sym = [], []
    for k in range(inst.dh):
        zk, uk = inst.iZ(k), inst.iu(k)
        if inst.sm == 0 and np.all(inst.N[:, k] < 0):
            info["dead"].append(k)
            continue
        flat_v = False
        if np.all(inst.W2[:, k] == 0):
            Bk = [i for (i, kk) in inst.pairs if kk == k]
            flat_v = True
            for signs in product((1, -1), repeat=len(Bk)):
                if not _realizable(np.array(signs, float)[:, None] * inst.Xb[Bk]):
                    continue
                Jk = np.where(inst.N[:, k] > 0, inst.sp, inst.sm).astype(float)
                for i, s in zip(Bk, signs):
                    Jk[i] = inst.sp if s > 0 else inst.sm
                E = (Jk[:, None] * r).T @ inst.Xb  # dy x d
                if np.abs(E @ R).max(initial=0.0) > tol * scale:
                    flat_v = False
                    break
        for idx in uk:
            e = np.zeros(p)
            e[idx] = 1.0
            cols.append(e)
        if flat_v:
            info["flat_v"].append(k)
            continue
        Rk = R
        if inst.sm == 0:  # v_k orthogonal to every point where neuron k is active or on its kink moves no output
            act = inst.N[:, k] >= 0
            Rk = orth(inst.Xb[act].T) if act.any() else np.zeros((inst.d, 0))
        for a in Rk.T:
            e = np.zeros(p)
            e[zk] = a
            cols.append(e)
        row = np.zeros(p)
        row[uk] = -inst.W2[:, k]
        row[zk] = inst.Z[k]
        sym.append(row)
        slopes = np.where(inst.N[:, k] > 0, inst.sp, np.where(inst.N[:, k] < 0, inst.sm, 0.0))
        if len(inst.ib2()) and inst.m and np.all(slopes == slopes[0]) and slopes[0] > 0 and k not in no_shift:
            c = np.linalg.lstsq(inst.Xb, np.ones(inst.m), rcond=None)[0]
            if np.allclose(inst.Xb @ c, 1.0, atol=1e-12):
                row = np.zeros(p)
                row[zk] = c
                sym.append(row)
    for idx in inst.ib2():
        e = np.zeros(p)
        e[idx] = 1.0
        cols.append(e)
    if not cols:
        return np.zeros((p, 0)), info
    T0 = np.array(cols).T  # orthonormal columns (disjoint supports, R orthonormal)
    if extra_rows is not None:
        sym.extend(np.atleast_2d(extra_rows))
    if sym:
        A = np.array(sym) @ T0
        # a row that vanishes on the kept coordinates (up to rounding) constrains nothing
        A = A[np.linalg.norm(A, axis=1) > 1e-12 * np.linalg.norm(np.array(sym), axis=1)]
        Kn = null_space(A) if A.size else np.eye(T0.shape[1])
        return T0 @ Kn, info
    return T0, info


def _realizable(S: np.ndarray) -> bool:
    """Is ``{v : S v > 0 on the nonzero rows}`` nonempty? Max margin ``t`` with ``S v >= t``, ``|v|_inf <= 1``,
    beyond ``LP_POS`` (rows scaled to unit length; a zero row has ``t = 0`` whatever its sign, and
    ``r_i xbar_i' = 0`` in ``E_k``)."""
    norms = np.linalg.norm(S, axis=1)
    G = S[norms > 0] / norms[norms > 0, None]
    if not len(G):
        return True
    q = S.shape[1]
    res = linprog(np.r_[np.zeros(q), -1.0], A_ub=np.c_[-G, np.ones(len(G))], b_ub=np.zeros(len(G)),
                  bounds=[(-1, 1)] * q + [(None, 1)], method="highs")
    return res.status == 0 and -res.fun > LP_POS


# --------------------------------------------------------------------------------- cone vs. span
def _span_meets_cone(E: np.ndarray, G: np.ndarray):
    """A nonzero ``c`` with ``G E c >= 0`` (E has orthonormal columns), or None. Returns (c, used_lp)."""
    q = E.shape[1]
    if q == 0:
        return None, False
    if G.shape[0] == 0:
        return np.eye(q)[:, 0], False
    A = G @ E
    nz = null_space(A)
    if nz.shape[1]:
        return nz[:, 0], False
    for j in range(q):  # cheap try: +-eigenvector
        for s in (1.0, -1.0):
            if np.all(s * A[:, j] >= 0):
                c = np.zeros(q)
                c[j] = s
                return c, False
    res = linprog(-A.sum(axis=0), A_ub=-A, b_ub=np.zeros(A.shape[0]), bounds=[(-1, 1)] * q, method="highs")
    if res.status == 0 and -res.fun > LP_POS * max(1.0, np.abs(A).max()):
        return res.x, True
    return None, True


# ------------------------------------------------------------------------------------ the oracle
def flat_counts(inst: Instance, tol: float = 1e-8):
    """(L, K) by brute force at a first-order stationary point (None, None without Assumption 2).

    Pair j = (i, k) has a flat ray along sign s if the one-sided derivative ``g_sigma . eta`` along
    the least-norm ``v_k`` with ``t_ik = s``, ``t_i'k = 0`` (other boundary points of k), is zero.
    K: pairs with ``w_k . r_i == 0``.
    """
    r = inst.residuals()
    L = K = 0
    for j, (i, k) in enumerate(inst.pairs):
        Bk = [ii for (ii, kk) in inst.pairs if kk == k]
        Xk = inst.Xb[Bk]
        if np.linalg.matrix_rank(Xk) < len(Bk):
            return None, None
        a = float(inst.W2[:, k] @ r[i])
        K += abs(a) <= tol * max(1.0, np.abs(inst.W2[:, k]).max() * np.abs(r[i]).max())
        flat = False
        for s in (1, -1):
            e = np.zeros(len(Bk))
            e[Bk.index(i)] = s
            eta = np.zeros(inst.p)
            eta[inst.iZ(k)] = np.linalg.pinv(Xk) @ e
            sigma = [1] * inst.M
            sigma[j] = s
            g = inst.piece(sigma)[0]
            flat |= abs(g @ eta) <= tol * max(1.0, np.abs(g).max())
        L += flat
    return L, K


def oracle_check(W1, b1, W2, b2, X, Y, loss="squared", s_plus=1.0, s_minus=0.0, weight_decay=0.0,
                 tol=1e-8, extra_rows=None, no_shift=()) -> OracleResult:
    """Brute-force verdict. Also accepts the older positional form ``(..., Y, s_plus, s_minus,
    weight_decay)`` (squared loss) used by ``tests/test_oracle.py``: a non-string 7th argument.
    ``extra_rows``, ``no_shift``: see :func:`allowed_basis`."""
    if not isinstance(loss, str):  # legacy positional call
        loss, s_plus, s_minus, weight_decay = "squared", loss, s_plus, s_minus
    inst = Instance(W1, b1, W2, b2, X, Y, s_plus, s_minus, weight_decay, loss)
    M = inst.M
    if M > MAX_M:
        raise ValueError(f"oracle limited to M <= {MAX_M} boundary pairs, got {M}")
    T = inst.t_rows()
    cache = {}

    def piece(sigma):
        key = tuple(int(s) for s in sigma)
        if key not in cache:
            cache[key] = inst.piece(key)
        return cache[key]

    n_lps = 0
    # ---- first order: every full-dimensional region
    for sigma in product((1, -1), repeat=M):
        g = piece(sigma)[0]
        scale = max(1.0, np.abs(g).max())
        kw = dict(A_ub=-(np.array(sigma, float)[:, None] * T), b_ub=np.zeros(M)) if M else {}
        res = linprog(g, bounds=[(-1, 1)] * inst.p, method="highs", **kw)
        n_lps += 1
        if res.status != 0:
            raise RuntimeError(f"first-order LP failed: {res.message}")
        if res.fun < -tol * scale:
            return OracleResult("descent", 1, res.x, 2**M, M, region=tuple(sigma), value=float(res.fun),
                                n_lps=n_lps)

    # ---- second order: faces tau in {-1, 0, +1}^M of the critical cones, inside S
    Q, info = allowed_basis(inst, tol, extra_rows, no_shift)
    L, K = flat_counts(inst, tol)
    base = dict(n_regions=2**M, M=M, dim_S=Q.shape[1], L=L, K=K, removed=info)
    TS = T @ Q
    proj = {}

    def projected(sigma):
        if sigma not in proj:
            g, H, _ = piece(sigma)
            gS = Q.T @ g
            # a gradient that is zero to the first-order test's tolerance is no constraint: kept as a
            # row, its rounding noise (inexact instances) would remove a random direction from V
            if np.abs(gS).max(initial=0.0) <= tol * max(1.0, np.abs(g).max()):
                gS = np.zeros_like(gS)
            proj[sigma] = (gS, Q.T @ H @ Q, max(1.0, np.abs(H).max()))
        return proj[sigma]

    zero = None
    n_faces = 0
    for tau in product((0, 1, -1), repeat=M):
        sigma = tuple(t if t else 1 for t in tau)
        gS, HS, hscale = projected(sigma)
        held = [j for j, t in enumerate(tau) if t == 0]
        free = [j for j, t in enumerate(tau) if t != 0]
        n_faces += 1
        V = null_space(np.vstack([TS[held], gS[None, :]])) if Q.shape[1] else np.zeros((0, 0))
        if V.shape[1] == 0:
            continue
        lam, U = np.linalg.eigh(V.T @ HS @ V)
        G = np.array([tau[j] for j in free], float)[:, None] * (TS[free] @ V)
        neg = U[:, lam < -tol * hscale]
        c, used = _span_meets_cone(neg, G)
        n_lps += used
        if c is not None:
            y = V @ (neg @ c)
            eta = Q @ y
            return OracleResult("descent", 2, eta, face=tau, region=sigma, n_faces=n_faces, n_lps=n_lps,
                                value=float(y @ HS @ y / (y @ y)), **base)
        if zero is None:
            zs = U[:, np.abs(lam) <= tol * hscale]
            c, used = _span_meets_cone(zs, G)
            n_lps += used
            if c is not None:
                y = V @ (zs @ c)
                zero = (Q @ y, tau, float(y @ HS @ y / (y @ y)))
    if zero is not None:
        return OracleResult("sosp", None, zero[0], face=zero[1], value=zero[2], n_faces=n_faces, n_lps=n_lps,
                            **base)
    return OracleResult("local_minimum", None, None, n_faces=n_faces, n_lps=n_lps, **base)


def oracle_on(inst: dict, weight_decay: float = 0.0, tol: float = 1e-8) -> OracleResult:
    """Convenience: run the oracle on a dict from ``instances.random_kink_instance``."""
    return oracle_check(inst["W1"], inst["b1"], inst["W2"], inst["b2"], inst["X"], inst["Y"],
                        loss=inst.get("loss", "squared"), s_plus=inst["s_plus"], s_minus=inst["s_minus"],
                        weight_decay=weight_decay, tol=tol)
