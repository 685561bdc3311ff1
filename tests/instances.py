"""Random tiny instances that sit exactly on kinks and are (mostly) exactly first-order stationary.

Integer data and weights make ``N_ik == 0`` exact in float64. Stationarity is planted through the
residuals: ``r`` is solved, in exact rational arithmetic, from the linear conditions

    sum_i r_i = 0 (with b2),  sum_i r_ic O_ik = 0,
    sum_{i off kink} h'(N_ik) (w_k . r_i) xbar_i + sum_{i on kink} s_i (w_k . r_i) xbar_i = 0,

with chosen Clarke multipliers ``s_i`` (at ``s_minus``, midway, or at ``s_plus``: the choice makes
flat rays), optionally ``w_k . r_i = 0`` (a pair flat both ways), and ``Y = Yhat - r``.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np


def rational_null_space(rows: list[list[Fraction]], n: int) -> list[list[Fraction]]:
    """Basis of ``{x : A x = 0}`` by exact Gauss-Jordan elimination."""
    A = [list(r) for r in rows]
    pivots, r = [], 0
    for c in range(n):
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
        if r == len(A):
            break
    free = [c for c in range(n) if c not in pivots]
    basis = []
    for f in free:
        x = [Fraction(0)] * n
        x[f] = Fraction(1)
        for i, c in enumerate(pivots):
            x[c] = -A[i][f]
        basis.append(x)
    return basis


def _independent(V: np.ndarray) -> bool:
    return V.shape[0] == 0 or np.linalg.matrix_rank(V) == V.shape[0]


def random_kink_instance(rng: np.random.Generator, stationary: float = 0.85, bias1: bool = True, bias2: bool = True,
                         s_minus: float | None = None, flat_prob: float = 2 / 3, both_flat_prob: float = 0.25,
                         max_tries: int = 200) -> dict:
    """One instance: dict(W1, b1, W2, b2, X, Y, s_plus, s_minus).

    ``flat_prob``: chance that a planted multiplier sits at a bound (a flat ray); ``both_flat_prob``:
    chance that a kink pair gets ``w_k . r_i = 0`` (flat both ways)."""
    for _ in range(max_tries):
        dx = int(rng.integers(1, 4))
        dh = int(rng.integers(1, 4))
        dy = int(rng.choice([1, 1, 2]))
        m = int(rng.integers(4, 13))
        sm = float(rng.choice([0.0, 0.0, 0.5])) if s_minus is None else s_minus
        X = rng.integers(-3, 4, size=(m, dx)).astype(float)
        W1 = rng.integers(-2, 3, size=(dh, dx)).astype(float)
        W2 = rng.integers(-2, 3, size=(dy, dh)).astype(float)
        if rng.random() < 0.15:
            W2[:, rng.integers(dh)] = 0.0  # a zero output column
        Xb = np.hstack([X, np.ones((m, 1))]) if bias1 else X
        if bias1:
            b1 = np.array([-W1[k] @ X[rng.integers(m)] + (0 if rng.random() < 0.8 else rng.integers(-2, 3))
                           for k in range(dh)], float)
            Z = np.hstack([W1, b1[:, None]])
        else:
            b1 = None
            for k in range(dh):  # a row orthogonal to one data point puts it on the kink
                x = X[rng.integers(m)]
                if dx >= 2 and rng.random() < 0.8:
                    W1[k] = 0
                    j, l = rng.choice(dx, 2, replace=False)
                    W1[k, j], W1[k, l] = x[l], -x[j]
            Z = W1
        if np.any(np.all(Z == 0, axis=1)):
            continue
        N = Xb @ Z.T
        B = N == 0
        M = int(B.sum())
        if not 1 <= M <= 7 or not all(_independent(Xb[B[:, k]]) for k in range(dh)):
            continue
        b2 = rng.integers(-2, 3, size=dy).astype(float) if bias2 else None
        O = np.where(N > 0, 1.0, sm) * N
        out = O @ W2.T + (b2 if bias2 else 0)
        if rng.random() >= stationary:
            Y = out + rng.integers(-2, 3, size=(m, dy))
        else:
            r = _plant_residuals(rng, N, B, O, W2, Xb, sm, bias2, flat_prob, both_flat_prob)
            if r is None:
                continue
            Y = out - r
        return dict(W1=W1, b1=b1, W2=W2, b2=b2, X=X, Y=Y, s_plus=1.0, s_minus=sm)
    raise RuntimeError("no instance found")


def _plant_residuals(rng, N, B, O, W2, Xb, sm, bias2, flat_prob, both_flat_prob):
    m, dh = N.shape
    dy = W2.shape[0]
    F = Fraction
    n = m * dy  # r[i, c] -> i * dy + c
    rows = []
    if bias2:
        for c in range(dy):
            rows.append([F(1) if j % dy == c else F(0) for j in range(n)])
    for c in range(dy):
        for k in range(dh):
            rows.append([F(O[j // dy, k]).limit_denominator() if j % dy == c else F(0) for j in range(n)])
    mids = [F(sm), (F(sm) + 1) / 2, F(1)]
    for k in range(dh):
        coef = []  # coefficient of (w_k . r_i) for each i
        for i in range(m):
            if B[i, k]:
                coef.append(mids[int(rng.choice([0, 2]))] if rng.random() < flat_prob else mids[1])
            else:
                coef.append(F(1) if N[i, k] > 0 else F(sm).limit_denominator())
        for jx in range(Xb.shape[1]):
            row = [F(0)] * n
            for i in range(m):
                for c in range(dy):
                    row[i * dy + c] = coef[i] * F(W2[c, k]) * F(Xb[i, jx])
            rows.append(row)
        for i in np.flatnonzero(B[:, k]):
            if rng.random() < both_flat_prob:  # a pair flat both ways
                rows.append([F(W2[j % dy, k]) if j // dy == i else F(0) for j in range(n)])
    basis = rational_null_space(rows, n)
    if not basis:
        return np.zeros((m, dy))
    r = [F(0)] * n
    for b in basis:
        c = int(rng.integers(-2, 3))
        r = [a + c * v for a, v in zip(r, b)]
    den = 1
    for v in r:
        den = den * v.denominator // np.gcd(den, v.denominator)
    ints = np.array([int(v * den) for v in r], float)
    if np.abs(ints).max() > 1e6:
        return None
    return ints.reshape(m, dy)
