"""Random tiny instances that sit EXACTLY on kinks, many of them exactly first-order stationary.

Integer ``X, W1, W2, b2`` (|.| <= 3; hyperplane normals |.| <= 4; kind "weight_decay" needs
balanced neurons ``|w_k| = |Z_k|`` so its W2 can be larger) and ``b1`` chosen to put data points
on neurons' kinks, so ``N_ik == 0`` is exact in float64. For squared loss, stationarity is planted
through the residuals: ``r`` (m x dy) is solved in exact rational arithmetic from

    sum_i r_i = 0 (with b2),     r' O = 0,
    sum_{i not in B_k} h'(N_ik) (w_k . r_i) xbar_i + sum_{i in B_k} s_i (w_k . r_i) xbar_i = 0   (each k),

with chosen multipliers ``s_i in {s_minus, (s_minus + s_plus)/2, s_plus}`` (an end value makes a flat
ray) and optionally ``w_k . r_i = 0`` (a "K pair", flat both ways); a random combination of the
rational null-space basis is scaled to integers (times 2^e), and ``Y = Yhat - r``. The point is then
first-order stationary iff every boundary pair has ``w_k . r_i >= 0`` (concave kinks descend), which
the generator aims for with probability ``nonneg_prob``.

For logistic / cross-entropy losses exact stationarity is planted with ``W2 = 0, b2 = 0`` (outputs 0,
so ``r_i = -y_i/2`` resp. ``+-(1/2, -1/2)`` exactly) and labels enumerated so that ``sum_i r_i = 0``
and ``r' O = 0``; every boundary pair is then a K pair. ``*_random`` kinds are not planted.

Every instance satisfies: 1 <= M <= max_M, no neuron with ``W1[k] = 0`` and ``b1[k] = 0``, and for
each neuron the ``xbar_i, i in B_k`` are linearly independent (Assumption 2).
"""

from __future__ import annotations

from fractions import Fraction
from itertools import product
from math import gcd, lcm

import numpy as np

SQUARED_KINDS = ("planted", "planted_noflat", "zero_column", "interpolating", "dy2", "leaky", "random")
OTHER_KINDS = ("logistic", "logistic_random", "cross_entropy", "cross_entropy_random", "weight_decay")
KINDS = SQUARED_KINDS + OTHER_KINDS
# "mixed": squared loss only (what tests/test_oracle.py compares against sospcheck's default loss)
MIXED_WEIGHTS = {"planted": 0.35, "planted_noflat": 0.10, "zero_column": 0.12, "interpolating": 0.08,
                 "dy2": 0.12, "leaky": 0.08, "random": 0.15}
# "any": every loss
ANY_WEIGHTS = {"planted": 0.24, "planted_noflat": 0.06, "zero_column": 0.08, "interpolating": 0.06,
               "dy2": 0.08, "leaky": 0.06, "random": 0.08, "logistic": 0.08, "logistic_random": 0.05,
               "cross_entropy": 0.08, "cross_entropy_random": 0.05, "weight_decay": 0.08}


def rational_null_space(rows: list[list[Fraction]], n: int) -> list[list[Fraction]]:
    """Basis of ``{x : A x = 0}`` by exact Gauss-Jordan elimination."""
    A = [list(r) for r in rows]
    pivots, r = [], 0
    for c in range(n):
        if r == len(A):
            break
        piv = next((i for i in range(r, len(A)) if A[i][c] != 0), None)
        if piv is None:
            continue
        A[r], A[piv] = A[piv], A[r]
        inv = 1 / A[r][c]
        A[r] = [v * inv for v in A[r]]
        for i in range(len(A)):
            if i != r and A[i][c] != 0:
                f = A[i][c]
                A[i] = [a - f * b for a, b in zip(A[i], A[r])]
        pivots.append(c)
        r += 1
    basis = []
    for f in (c for c in range(n) if c not in pivots):
        x = [Fraction(0)] * n
        x[f] = Fraction(1)
        for i, c in enumerate(pivots):
            x[c] = -A[i][f]
        basis.append(x)
    return basis


def _independent(V: np.ndarray) -> bool:
    return V.shape[0] == 0 or np.linalg.matrix_rank(V) == V.shape[0]


def _pick(rng, weights: dict) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def random_kink_instance(rng: np.random.Generator, kind: str = "mixed", *, stationary: float | None = None,
                         bias1: bool = True, bias2: bool = True, s_minus: float | None = None,
                         flat_prob: float = 2 / 3, both_flat_prob: float = 0.25, nonneg_prob: float = 0.75,
                         min_M: int = 1, max_M: int = 8, max_tries: int = 2000) -> dict:
    """One instance: dict(W1, b1, W2, b2, X, Y, s_plus, s_minus, loss, weight_decay, kind).

    kind: one of ``KINDS``, ``"mixed"`` (squared-loss kinds, ``MIXED_WEIGHTS``) or ``"any"``
    (``ANY_WEIGHTS``). ``stationary`` (legacy): probability of a planted rather than ``random`` kind in
    ``"mixed"``. ``flat_prob``: chance a planted multiplier sits at a bound (flat ray);
    ``both_flat_prob``: chance a boundary pair gets ``w_k . r_i = 0``; ``nonneg_prob``: chance the
    planted residual is redrawn until every boundary pair has ``w_k . r_i >= 0``.
    ``b1 = None`` / ``b2 = None`` when ``bias1`` / ``bias2`` is False. ``weight_decay`` is 0 except
    for kind ``"weight_decay"`` (planted stationary WITH the decay term; pass it on to the checker!).
    ``min_M``/``max_M``: bounds on the number of boundary pairs (max_M = 8 by default)."""
    if not isinstance(kind, str):  # legacy positional ``stationary``
        stationary, kind = float(kind), "mixed"
    k = kind  # the kind is drawn once, then retried, so the weights are the real proportions
    if kind == "mixed":
        w = dict(MIXED_WEIGHTS)
        if stationary is not None:
            tot = sum(v for n, v in w.items() if n != "random")
            w = {n: (1 - stationary) if n == "random" else v * stationary / tot for n, v in w.items()}
        k = _pick(rng, w)
    elif kind == "any":
        k = _pick(rng, ANY_WEIGHTS)
    elif kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {KINDS + ('mixed', 'any')}")
    for _ in range(max_tries):
        inst = _try(rng, k, bias1, bias2, s_minus, flat_prob, both_flat_prob, nonneg_prob, min_M, max_M)
        if inst is not None:
            return inst
    raise RuntimeError(f"no instance of kind {k!r} found in {max_tries} tries")


def random_instances(seed: int, n: int, kind: str = "mixed", **kw) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [random_kink_instance(rng, kind, **kw) for _ in range(n)]


# ------------------------------------------------------------------------------------- internals
def _normal_through(P: np.ndarray):
    """Integer normal vector of the hyperplane through the points P (rows), or None."""
    D = (P[1:] - P[0]).astype(int)
    dx = P.shape[1]
    if dx == 2 and len(D) == 1:
        n = np.array([D[0, 1], -D[0, 0]])
    elif dx == 3 and len(D) == 2:
        n = np.cross(D[0], D[1])
    else:
        return None
    if not np.any(n):
        return None
    g = int(np.gcd.reduce(np.abs(n)))
    return (n // g).astype(float)


def _geometry(rng, kind, bias1, s_minus):
    dx = int(rng.choice([1, 2, 2, 3]))
    dh = int(rng.choice([1, 1, 2, 2, 3]))
    m = int(rng.integers(3, 9)) if rng.random() < 0.3 else int(rng.integers(6, 9))
    if kind in ("dy2", "cross_entropy", "cross_entropy_random"):
        dy = 2
    elif kind in ("logistic", "logistic_random"):
        dy = 1
    else:
        dy = int(rng.choice([1, 1, 2]))
    sm = s_minus if s_minus is not None else (0.5 if kind == "leaky" else float(rng.choice([0.0, 0.0, 0.5])))
    X = rng.integers(-3, 4, size=(m, dx)).astype(float)
    W1 = rng.integers(-2, 3, size=(dh, dx)).astype(float)
    b1 = np.zeros(dh) if bias1 else None
    for k in range(dh):
        u = rng.random()
        if bias1:
            if dx >= 2 and u < 0.4:  # hyperplane through dx data points: M_k >= dx (if distinct)
                idx = rng.choice(m, size=min(dx, m), replace=False)
                n = _normal_through(X[idx])
                if n is not None and np.abs(n).max() <= 4:
                    W1[k] = n
                b1[k] = -W1[k] @ X[idx[0]]
            elif u < 0.9:
                b1[k] = -W1[k] @ X[rng.integers(m)]
            else:
                b1[k] = float(rng.integers(-3, 4))
        elif dx >= 2 and u < 0.8:  # no bias: a row orthogonal to one data point puts it on the kink
            x = X[rng.integers(m)]
            W1[k] = 0.0
            j, l = rng.choice(dx, 2, replace=False)
            W1[k, j], W1[k, l] = x[l], -x[j]
    return dx, dh, dy, m, sm, X, W1, b1


def _try(rng, kind, bias1, bias2, s_minus, flat_prob, both_flat_prob, nonneg_prob, min_M, max_M):
    dx, dh, dy, m, sm, X, W1, b1 = _geometry(rng, kind, bias1, s_minus)
    Xb = np.hstack([X, np.ones((m, 1))]) if bias1 else X
    Z = np.hstack([W1, b1[:, None]]) if bias1 else W1
    if np.any(np.all(Z == 0, axis=1)):
        return None
    N = Xb @ Z.T
    B = N == 0
    M = int(B.sum())
    if not max(1, min_M) <= M <= max_M or not all(_independent(Xb[B[:, k]]) for k in range(dh)):
        return None
    W2 = rng.integers(-2, 3, size=(dy, dh)).astype(float)
    b2 = rng.integers(-2, 3, size=dy).astype(float) if bias2 else None
    if kind == "weight_decay":  # stationarity with decay forces balanced neurons |w_k| = |Z_k|
        for k in range(dh):
            w = _integer_point_on_sphere(rng, int(Z[k] @ Z[k]), dy)
            if w is None:
                return None
            W2[:, k] = w
    on_kink = [k for k in range(dh) if B[:, k].any()]
    if kind == "zero_column" or (kind in ("planted", "dy2", "leaky", "random") and rng.random() < 0.1):
        W2[:, int(rng.choice(on_kink))] = 0.0
    O = np.where(N > 0, 1.0, sm) * N
    base = dict(W1=W1, b1=b1, s_plus=1.0, s_minus=sm, X=X, kind=kind, weight_decay=0.0)

    if kind in ("logistic", "cross_entropy"):
        W2[:] = 0.0
        if bias2:
            b2[:] = 0.0
        y = _balanced_labels(rng, O, bias2)
        if y is None:
            return None
        Y = y if kind == "logistic" else (y < 0).astype(int)  # y = +1 <-> class 0 <-> r = (-1/2, +1/2)
        return dict(base, W2=W2, b2=b2, Y=Y, loss=kind)
    if kind in ("logistic_random", "cross_entropy_random"):
        Y = rng.choice([-1.0, 1.0], size=m) if kind == "logistic_random" else rng.integers(0, dy, size=m)
        return dict(base, W2=W2, b2=b2, Y=Y, loss=kind.replace("_random", ""))

    out = O @ W2.T + (b2 if bias2 else 0.0)
    if kind == "random":
        noise = rng.integers(-2, 3, size=(m, dy)).astype(float)
        if not noise.any():
            noise[0, 0] = 1.0
        Y = out + noise
    elif kind == "interpolating":
        Y = out.copy()
    elif kind == "weight_decay":
        got = _plant_residuals(rng, N, B, O, W2, Xb, sm, bias2, flat_prob, both_flat_prob, nonneg_prob,
                               Z=Z, b2=b2)
        if got is None:
            return None
        r, lam = got
        return dict(base, W2=W2, b2=b2, Y=out - r, loss="squared", weight_decay=lam)
    else:
        fp, bp = (0.0, 0.0) if kind == "planted_noflat" else (flat_prob, both_flat_prob)
        r = _plant_residuals(rng, N, B, O, W2, Xb, sm, bias2, fp, bp, nonneg_prob)
        if r is None:
            return None
        Y = out - r
    return dict(base, W2=W2, b2=b2, Y=Y, loss="squared")


def _integer_point_on_sphere(rng, n2: int, dy: int):
    """A random integer vector w (dy,) with |w|^2 = n2, or None."""
    s = int(round(n2 ** 0.5)) + 1
    pts = [w for w in product(range(-s, s + 1), repeat=dy) if sum(x * x for x in w) == n2]
    return np.array(pts[int(rng.integers(len(pts)))], float) if pts else None


def _balanced_labels(rng, O, bias2):
    """Labels y in {-1, +1}^m with sum y = 0 (if bias2) and y' O = 0, or None."""
    m = O.shape[0]
    ok = []
    for y in product((-1.0, 1.0), repeat=m):
        y = np.array(y)
        if (not bias2 or y.sum() == 0) and not np.any(y @ O) and np.any(y):
            ok.append(y)
    if not ok:
        return None
    return ok[int(rng.integers(len(ok)))]


def _plant_residuals(rng, N, B, O, W2, Xb, sm, bias2, flat_prob, both_flat_prob, nonneg_prob, Z=None, b2=None):
    """Residuals r (m x dy, exact dyadic floats) making the point Clarke-stationary, or None.

    With ``Z`` given (weight decay), the conditions get the right-hand sides ``-lam * (b2, W2, Z_k)``
    and the function returns ``(r, lam)`` with ``lam = odd part of a denominator * 2^e`` chosen so
    that ``r = lam * r_p + r_h`` is exact."""
    m, dh = N.shape
    dy = W2.shape[0]
    F = Fraction
    n = m * dy  # r[i, c] -> i * dy + c
    rows, rhs = [], []  # rows . r = lam * rhs
    if bias2:
        for c in range(dy):
            rows.append([F(1) if j % dy == c else F(0) for j in range(n)])
            rhs.append(F(0) if b2 is None else -F(b2[c]))
    for c in range(dy):
        for k in range(dh):
            rows.append([F(O[j // dy, k]) if j % dy == c else F(0) for j in range(n)])
            rhs.append(-F(W2[c, k]))
    mults = [F(sm), (F(sm) + 1) / 2, F(1)]
    for k in range(dh):
        coef = []  # multiplier of (w_k . r_i) xbar_i
        for i in range(m):
            if B[i, k]:
                coef.append(mults[int(rng.choice([0, 2]))] if rng.random() < flat_prob else mults[1])
            else:
                coef.append(F(1) if N[i, k] > 0 else F(sm))
        for jx in range(Xb.shape[1]):
            row = [F(0)] * n
            for i in range(m):
                for c in range(dy):
                    row[i * dy + c] = coef[i] * F(W2[c, k]) * F(Xb[i, jx])
            rows.append(row)
            rhs.append(F(0) if Z is None else -F(Z[k, jx]))
        for i in np.flatnonzero(B[:, k]):
            if rng.random() < both_flat_prob:
                rows.append([F(W2[j % dy, k]) if j // dy == i else F(0) for j in range(n)])
                rhs.append(F(0))
    basis = rational_null_space(rows, n)
    basis = [_integer_vector(b) for b in basis]
    part, lam = None, None
    if Z is not None:  # a particular solution of rows . r = rhs, from the null space of [rows | -rhs]
        aug = rational_null_space([row + [-v] for row, v in zip(rows, rhs)], n + 1)
        sol = next((v for v in aug if v[-1] != 0), None)
        if sol is None:
            return None
        part = [v / sol[-1] for v in sol[:-1]]
        odd = lcm(*(v.denominator for v in part))
        while odd % 2 == 0:
            odd //= 2
        lam = F(odd) * F(2) ** int(rng.integers(-2, 2))
        if lam > 8:
            return None
        part = [lam * v for v in part]
    elif not basis:
        return np.zeros((m, dy))  # only r = 0: exact interpolation
    want_nonneg = rng.random() < nonneg_prob
    pairs = np.argwhere(B)
    r = None
    for _ in range(40):
        coefs = rng.integers(-2, 3, size=len(basis))
        if part is None and not coefs.any():
            continue
        cand = [sum((int(c) * b[j] for c, b in zip(coefs, basis)), F(0)) for j in range(n)]
        if part is not None:
            cand = [a + b for a, b in zip(cand, part)]
        elif not any(cand):
            continue
        r = cand
        a = [sum(F(W2[c, k]) * cand[i * dy + c] for c in range(dy)) for i, k in pairs]
        if not want_nonneg or all(v >= 0 for v in a):
            break
    if r is None:
        return None
    if part is not None:  # inhomogeneous: no rescaling; dyadic by the choice of lam
        if any(v.denominator & (v.denominator - 1) for v in r) or max(abs(v) for v in r) > 1e4:
            return None
        return np.array([float(v) for v in r]).reshape(m, dy), float(lam)
    ints = np.array(_integer_vector(r), float)
    if np.abs(ints).max() > 1e4:
        return None
    scale = 2.0 ** int(rng.integers(-2, 3))  # exact in float64; sets residual vs Gauss-Newton size
    return (ints * scale).reshape(m, dy)


def _integer_vector(v: list[Fraction]) -> list[Fraction]:
    """The primitive integer vector along a rational vector."""
    den = lcm(*(x.denominator for x in v))
    ints = [int(x * den) for x in v]
    g = 0
    for x in ints:
        g = gcd(g, x)
    return [Fraction(x // g) for x in ints] if g else [Fraction(0)] * len(v)
