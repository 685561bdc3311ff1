"""Random tiny networks whose data sit EXACTLY on degenerate kinks: some neuron's boundary vectors
``xbar_i, i in B_k`` are linearly dependent (Assumption 2 fails; issue 14).

Like ``instances.py``: integer ``X, W1, b1, W2, b2`` so ``N_ik == 0`` is exact in float64, whole
networks with data, squared loss unless the kind says otherwise. The degenerate kink is built on
purpose, one geometry per kind:

- ``duplicate``: a kink point repeated (2 or 3 copies), any dx, with b1.
- ``collinear``: dx = 2, three or four data points on one kink line (rank 2, 3-4 distinct planes).
- ``coplanar``: dx = 3, four or five points on one kink plane (rank 3 in R^4).
- ``origin_pair``: no b1; ``x`` and ``lam x`` (``lam`` in {-1, 2, -2}) on a kink through the origin.
- ``mixed_sign``: duplicates whose ``a_ik = w_k . r_i`` have opposite signs.
- ``cancelling``: duplicates with ``a_ik + a_jk = 0``, ``a_ik != 0`` (the pair vanishes from the risk,
  but not from the Clarke zonotope; planted with equal or with opposite-end multipliers).
- ``leaky`` (``s_minus = 1/2``), ``dy2`` (two outputs), ``several`` (two neurons, each with a
  degenerate kink, sharing a duplicated point): one of the geometries above.
- ``logistic``: logistic loss, random labels and weights (not planted).

Residuals (squared loss): with probability ``planted_prob`` the point is planted Clarke-zonotope
stationary: ``r`` is solved exactly from ``sum_i r_i = 0`` (with b2), ``r' O = 0`` and, per neuron,
``sum_i s_ik (w_k . r_i) xbar_i = 0`` with chosen ``s_ik`` (``h'(N_ik)`` off the kink, one of
``s_minus``, the midpoint, ``s_plus`` on it), plus the kind's extra rows; ``Y = Yhat - r``. With
dependent ``xbar_i`` that is NOT first-order stationarity (the zonotope is larger than the Clarke
subdifferential), which is exactly what these instances probe. Otherwise ``Y = Yhat + noise``.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from instances import _integer_vector, rational_null_space
from oracle import Instance

KINDS = ("duplicate", "collinear", "coplanar", "origin_pair", "mixed_sign", "cancelling", "leaky", "dy2",
         "several", "logistic")
GEOMETRIES = ("duplicate", "collinear", "coplanar", "origin_pair")


def degenerate_instance(rng: np.random.Generator, kind: str = "mixed", *, max_M: int = 6,
                        planted_prob: float = 0.8, nonneg_prob: float = 0.6, max_tries: int = 3000) -> dict:
    """One instance: dict(W1, b1, W2, b2, X, Y, s_plus, s_minus, loss, weight_decay, kind, degenerate).

    ``degenerate``: the neurons whose boundary rows are dependent (at least one). ``max_M``: most
    boundary pairs over all neurons (the oracle enumerates ``3^M`` faces). ``nonneg_prob``: chance a
    planted residual is redrawn until every ``a_ik >= 0`` (concave kinks would descend at once)."""
    if kind == "mixed":
        kind = KINDS[int(rng.integers(len(KINDS)))]
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {KINDS + ('mixed',)}")
    tries = (_try(rng, kind, max_M, planted_prob, nonneg_prob) for _ in range(max_tries))
    inst = next((t for t in tries if t is not None), None)
    if inst is None:
        raise RuntimeError(f"no degenerate instance of kind {kind!r} in {max_tries} tries")
    return inst


def degenerate_instances(seed: int, n: int, kind: str = "mixed", **kw) -> list[dict]:
    """``n`` instances from one seed (``kind="mixed"``: a kind drawn per instance)."""
    rng = np.random.default_rng(seed)
    return [degenerate_instance(rng, kind, **kw) for _ in range(n)]


# ------------------------------------------------------------------------------------- geometry
def _kink_basis(w: np.ndarray) -> np.ndarray:
    """Integer vectors spanning ``{u : w . u = 0}`` (rows), small entries."""
    dx = len(w)
    if dx == 1:
        return np.zeros((0, 1))
    if dx == 2:
        return np.array([[-w[1], w[0]]])
    rows = [np.cross(w, e) for e in np.eye(3)]
    rows = [r for r in rows if np.any(r)]
    out = [rows[0]]
    for r in rows[1:]:
        if np.linalg.matrix_rank(np.array(out + [r])) > len(out):
            out.append(r)
    return np.array(out[:2])


def _random_w(rng, dx) -> np.ndarray:
    while True:
        w = rng.integers(-2, 3, size=dx).astype(float)
        if np.any(w):
            return w


def _degenerate_points(rng, geometry: str, dx: int, bias1: bool):
    """A kink ``(w, b)`` and points on it whose ``xbar`` rows are dependent; ``dup`` = a duplicated pair."""
    w = _random_w(rng, dx)
    U = _kink_basis(w)
    x0 = rng.integers(-2, 3, size=dx).astype(float) if bias1 else np.zeros(dx)
    b = -float(w @ x0) if bias1 else None
    if geometry == "duplicate" or U.shape[0] == 0:
        pts = [x0 + (U[0] * rng.integers(-1, 2) if U.shape[0] and not bias1 else 0.0)]
        if not np.any(pts[0]):
            return None
        pts = pts * int(rng.choice([2, 2, 3]))
        if U.shape[0] and rng.random() < 0.5:  # one more point on the kink
            pts.append(x0 + U[-1] * rng.choice([-1, 1]))
        return w, b, pts, (0, 1)
    if geometry == "collinear":
        ts = rng.choice([-2, -1, 1, 2], size=int(rng.choice([2, 3])), replace=False)
        return w, b, [x0] + [x0 + t * U[0] for t in ts], None
    if geometry == "coplanar":
        coefs = [(0, 0), (1, 0), (0, 1)] + [tuple(rng.integers(-1, 2, size=2)) for _ in range(int(rng.choice([1, 2])))]
        pts = [x0 + i * U[0] + j * U[1] for i, j in dict.fromkeys(coefs)]
        return (w, b, pts, None) if len(pts) >= 4 else None
    # origin_pair: x and lam x on a kink through the origin (no b1)
    x = U[0] if U.shape[0] == 1 or rng.random() < 0.5 else U[0] + U[-1] * rng.choice([-1, 1])
    lam = float(rng.choice([-1, 2, -2]))
    pts = [x, lam * x]
    if U.shape[0] == 2 and rng.random() < 0.5:
        pts.append(U[1])
    return w, None, pts, None


def _geometry_for(rng, kind):
    if kind in GEOMETRIES:
        return kind
    if kind in ("mixed_sign", "cancelling"):
        return "duplicate"
    return str(rng.choice(GEOMETRIES))


def _try(rng, kind, max_M, planted_prob, nonneg_prob):
    geometry = _geometry_for(rng, kind)
    bias1 = geometry != "origin_pair" and not (geometry == "duplicate" and rng.random() < 0.2)
    dims = {"collinear": 2, "coplanar": 3, "origin_pair": int(rng.choice([2, 3]))}
    dx = dims.get(geometry, int(rng.choice([1, 2, 3])))
    if not bias1 and dx == 1:
        dx = 2
    dh = int(rng.choice([2, 3])) if kind == "several" else int(rng.choice([1, 2, 2, 3]))
    dy = 2 if kind == "dy2" else (1 if kind == "logistic" else int(rng.choice([1, 1, 2])))
    s_minus = 0.5 if kind == "leaky" else float(rng.choice([0.0, 0.0, 0.5]))
    bias2 = bool(rng.random() < 0.8)

    got = _degenerate_points(rng, geometry, dx, bias1)
    if got is None:
        return None
    w, b, pts, dup = got
    n_extra = int(rng.integers(2, 5))
    X = np.array(pts + [rng.integers(-3, 4, size=dx).astype(float) for _ in range(n_extra)])
    perm = rng.permutation(len(X))
    X = X[perm]
    inv = np.argsort(perm)
    dup = None if dup is None else (int(inv[dup[0]]), int(inv[dup[1]]))
    m = len(X)
    W1 = np.zeros((dh, dx))
    b1 = np.zeros(dh) if bias1 else None
    W1[0] = w
    if bias1:
        b1[0] = b
    for k in range(1, dh):
        W1[k] = _random_w(rng, dx)
        if kind == "several" and k == 1:  # a second kink through a duplicated point: two degenerate neurons
            anchor = X[dup[0]] if dup is not None else X[int(rng.integers(m))]
            if bias1:
                b1[k] = -W1[k] @ anchor
            elif dx >= 2:
                W1[k] = _kink_basis(anchor)[0] if np.any(anchor) else W1[k]
        elif bias1:
            b1[k] = -W1[k] @ X[int(rng.integers(m))] if rng.random() < 0.6 else float(rng.integers(-3, 4))
    kinks = Instance(W1, b1, np.zeros((1, dh)), None, X, np.zeros(m))  # the oracle's xbar_i, Z and N
    Xb, N = kinks.Xb, kinks.N
    if np.any(np.all(kinks.Z == 0, axis=1)):
        return None
    B = N == 0
    M = int(B.sum())
    degenerate = [k for k in range(dh) if B[:, k].any() and np.linalg.matrix_rank(Xb[B[:, k]]) < B[:, k].sum()]
    if not 1 <= M <= max_M or not degenerate or (kind == "several" and len(degenerate) < 2):
        return None
    if kind in ("mixed_sign", "cancelling") and (dup is None or not (B[dup[0], 0] and B[dup[1], 0])):
        return None
    W2 = rng.integers(-2, 3, size=(dy, dh)).astype(float)
    if not np.any(W2[:, degenerate]):
        return None
    b2 = rng.integers(-2, 3, size=dy).astype(float) if bias2 else None
    O = np.where(N > 0, 1.0, s_minus) * N
    out = O @ W2.T + (b2 if bias2 else 0.0)
    base = dict(W1=W1, b1=b1, W2=W2, b2=b2, X=X, s_plus=1.0, s_minus=s_minus, kind=kind, weight_decay=0.0,
                degenerate=degenerate)
    if kind == "logistic":
        return dict(base, Y=rng.choice([-1.0, 1.0], size=m), loss="logistic")
    if kind in ("mixed_sign", "cancelling") or rng.random() < planted_prob:
        r = _planted_residuals(rng, kind, N, B, O, W2, Xb, s_minus, bias2, dup, nonneg_prob)
        if r is None:
            return None
    else:
        r = rng.integers(-2, 3, size=(m, dy)).astype(float)
        if not r.any():
            r[0, 0] = 1.0
    return dict(base, Y=out - r, loss="squared")


# ------------------------------------------------------------------------------------ residuals
def _condition_rows(rng, kind, N, B, O, W2, Xb, s_minus, bias2, dup):
    """Rows ``K`` (exact dyadic floats) of the linear conditions ``K vec(r) = 0`` (``vec`` row-major)."""
    m, dh = N.shape
    dy = W2.shape[0]
    eye = np.eye(dy)
    rows = [np.kron(np.ones(m), eye[c]) for c in range(dy)] if bias2 else []
    rows += [np.kron(O[:, k], eye[c]) for k in range(dh) for c in range(dy)]
    mults = np.array([s_minus, (s_minus + 1.0) / 2, 1.0])
    for k in range(dh):
        coef = np.where(N[:, k] > 0, 1.0, s_minus)
        on = np.flatnonzero(B[:, k])
        coef[on] = mults[rng.choice(3, size=on.size, p=[1 / 3, 1 / 3, 1 / 3])]
        if kind == "cancelling" and k == 0:
            # equal multipliers: the pair cancels in the planted equation too (often truly stationary);
            # s_minus against s_plus: the zonotope holds 0 only thanks to the pair (a hidden descent)
            coef[list(dup)] = (coef[dup[0]],) * 2 if rng.random() < 0.5 else (mults[0], mults[2])
        rows += [np.kron(coef * Xb[:, j], W2[:, k]) for j in range(Xb.shape[1])]
    if kind == "cancelling":
        e = np.zeros(m)
        e[list(dup)] = 1.0
        rows.append(np.kron(e, W2[:, 0]))
    return np.array(rows)


def _planted_residuals(rng, kind, N, B, O, W2, Xb, s_minus, bias2, dup, nonneg_prob):
    m, dy = N.shape[0], W2.shape[0]
    K = _condition_rows(rng, kind, N, B, O, W2, Xb, s_minus, bias2, dup)
    basis = [_integer_vector(v) for v in rational_null_space([[Fraction(x) for x in row] for row in K], m * dy)]
    if not basis:
        return None
    want_nonneg = kind not in ("mixed_sign", "cancelling") and rng.random() < nonneg_prob
    for _ in range(40):
        coefs = rng.integers(-2, 3, size=len(basis))
        r = np.array(_integer_vector([sum((int(c) * v[j] for c, v in zip(coefs, basis)), Fraction(0))
                                      for j in range(m * dy)]), float).reshape(m, dy)
        if not r.any() or np.abs(r).max() > 1e4:
            continue
        a = r @ W2
        on = a[B]
        if kind == "mixed_sign" and not a[dup[0], 0] * a[dup[1], 0] < 0:
            continue
        if kind == "cancelling" and a[dup[0], 0] == 0:
            continue
        if want_nonneg and np.any(on < 0):
            continue
        return r * 2.0 ** int(rng.integers(-2, 2))
    return None


# ------------------------------------------------------------------------------ wide kinks (M_k large)
def wide_kink_instance(rng: np.random.Generator, M: int, rank: int, *, duplicated: bool = False,
                       convex: bool = True, s_minus: float = 0.0, s_values: tuple | None = None,
                       max_tries: int = 200) -> dict:
    """One neuron (``dh = 1``, ``dy = 1``, squared loss, with b1 and b2) with ``M`` data points on its kink
    whose ``xbar_i`` have rank ``rank`` (``dx = rank``: the points lie on the kink hyperplane, an affine
    set of dimension ``rank - 1``; ``duplicated``: ``M / 2`` points, each twice), plus off-kink points.
    Too many points for the oracle (``M`` up to 12 and more): for the check's budget and cost.

    Residuals: ``a_i = r_i`` on the kink drawn from {1/2, 1, 2} (``convex``; else also negative), slopes
    ``s_i`` from ``s_values`` (default ``{s_minus, midpoint, 1}``; an end value makes flat directions, all
    ``1``: the cell where every ``t_i >= 0`` is flat, hence critical faces),
    and the off-kink residuals solved (least squares, float) from ``sum_i r_i = 0``, ``r' O = 0`` and
    ``c_k = -sum_{i on the kink} s_i a_i xbar_i``: with ``convex`` the point is first-order stationary
    (``f_k`` convex with 0 a subgradient) up to rounding."""
    dx = rank
    for _ in range(max_tries):
        w = _random_w(rng, dx)
        U = np.array([np.eye(dx)[j] - w[j] * w / (w @ w) for j in range(dx)])  # spans the kink's directions
        U = U[np.argsort(-np.linalg.norm(U, axis=1))][: dx - 1] * float(w @ w)  # integer rows
        x0 = rng.integers(-2, 3, size=dx).astype(float)
        n_pts = M // 2 if duplicated else M
        side = 7  # distinct integer points on the kink: a grid of side**(dx - 1) points, drawn without replacement
        while dx > 1 and side ** (dx - 1) < 2 * n_pts:
            side += 2
        coefs = np.zeros((n_pts, 0))  # dx = 1: the kink is one point
        if dx > 1:
            cells = rng.choice(side ** (dx - 1), size=n_pts, replace=False)
            coefs = np.array(np.unravel_index(cells, (side,) * (dx - 1))).T - side // 2
        P = x0 + coefs.astype(float) @ U
        if duplicated:
            P = np.repeat(P, 2, axis=0)
        Pb = np.hstack([P, np.ones((len(P), 1))])
        if np.linalg.matrix_rank(Pb) != rank:
            continue
        off = rng.integers(-4, 5, size=(rank + 8, dx)).astype(float)
        b = -float(w @ x0)
        N_off = off @ w + b
        off = off[N_off != 0]
        X = np.vstack([P, off])
        m = len(X)
        Xb = np.hstack([X, np.ones((m, 1))])
        N = Xb @ np.r_[w, b]
        on = N == 0
        if on.sum() != M:
            continue
        slope = np.where(N > 0, 1.0, s_minus)
        O = slope * N
        a_on = rng.choice([0.5, 1.0, 2.0], size=M) * (1.0 if convex else rng.choice([-1.0, 1.0], size=M))
        s = rng.choice(s_values or [s_minus, (s_minus + 1.0) / 2, 1.0], size=M)
        # unknown: r on the off-kink points; rows: sum r = 0, r . O = 0, sum_off slope r xbar = -sum_on s a xbar
        A = np.vstack([np.ones(m - M), O[~on], (slope[~on, None] * Xb[~on]).T])
        rhs = np.r_[-a_on.sum(), 0.0, -(s * a_on) @ Xb[on]]
        r_off, *_ = np.linalg.lstsq(A, rhs, rcond=None)
        if np.linalg.norm(A @ r_off - rhs) > 1e-9 * max(1.0, np.linalg.norm(rhs)):
            continue
        r = np.zeros(m)
        r[on], r[~on] = a_on, r_off
        W2, b2 = np.ones((1, 1)), np.zeros(1)
        out = O[:, None] @ W2.T + b2
        return dict(W1=w[None, :], b1=np.array([b]), W2=W2, b2=b2, X=X, Y=(out[:, 0] - r), s_plus=1.0,
                    s_minus=s_minus, loss="squared", weight_decay=0.0, kind="wide", degenerate=[0] if M > rank else [],
                    M=M, rank=rank)
    raise RuntimeError(f"no wide kink instance with M = {M}, rank {rank} in {max_tries} tries")
