"""Copositivity of a small symmetric matrix: is ``y' S y >= 0`` for all ``y >= 0`` (DESIGN.md section 3, step 4)?

Small ``r``: Kaplan's criterion. ``S`` is copositive iff no principal submatrix ``S_JJ`` has a
positive eigenvector with a negative eigenvalue, strictly copositive iff none has one with a
nonpositive eigenvalue. Eigenvalues may repeat, so "has a positive eigenvector" is decided over
the whole eigenspace (a nonnegative vector in the span, found by a small LP), which also yields
the witness ``y``. ``O(r^3 2^r)``.

Larger ``r``: the standard quadratic program ``min y'Sy, y >= 0, sum y = 1`` through its KKT
conditions as a mixed-integer LP (HiGHS via ``scipy.optimize.milp``): its optimum is ``mu``
with ``S y - mu 1 = lambda >= 0``, ``lambda_i y_i = 0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp, nnls

from .margins import Margins

__all__ = ["CopositivityResult", "copositivity", "copositivity_enumerate", "copositivity_milp",
           "copositivity_pretests", "orthant_lower_bound"]

STRICT = "strictly_copositive"
COPOSITIVE = "copositive"
NOT = "not_copositive"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class CopositivityResult:
    """``status`` in {strictly_copositive, copositive, not_copositive, unknown}; ``witness`` is a
    ``y >= 0`` with ``sum y = 1`` and ``y'Sy = value`` (< 0, or ~ 0 for plain copositive).
    ``margins``: the decisions against ``tol`` that led here (:mod:`sospcheck.margins`)."""

    status: str
    witness: np.ndarray | None
    value: float | None
    method: str
    work: int
    margins: list = field(default_factory=list)


def _nonneg_in_span(V: np.ndarray) -> np.ndarray | None:
    """A ``y >= 0``, ``sum y = 1`` in ``span(V)``, or None."""
    if V.shape[1] == 1:
        v = V[:, 0]
        for s in (1.0, -1.0):
            y = s * v
            if np.all(y >= -1e-12 * np.max(np.abs(y))):
                y = np.clip(y, 0, None)
                return y / y.sum()
        return None
    r, q = V.shape
    res = linprog(
        np.zeros(q), A_ub=-V, b_ub=np.zeros(r), A_eq=V.sum(axis=0)[None, :], b_eq=[1.0],
        bounds=[(None, None)] * q, method="highs",
    )
    if res.status != 0:
        return None
    y = np.clip(V @ res.x, 0, None)
    return y / y.sum() if y.sum() > 0 else None


def copositivity_enumerate(S: np.ndarray, tol: float, margins: Margins | None = None) -> CopositivityResult:
    """Kaplan's criterion over all ``2^r - 1`` principal submatrices; ``tol`` is absolute."""
    m = Margins() if margins is None else margins
    r = S.shape[0]
    zero_witness = None
    work = 0
    for size in range(1, r + 1):
        for J in combinations(range(r), size):
            work += 1
            J = list(J)
            lam, vec = np.linalg.eigh(S[np.ix_(J, J)])
            m.vector_abs_le("copositivity: subset eigenvalue", lam, tol)
            for mask, negative in ((lam < -tol, True), (np.abs(lam) <= tol, False)):
                if not np.any(mask) or (not negative and zero_witness is not None):
                    continue
                yJ = _nonneg_in_span(vec[:, mask])
                if yJ is None:
                    continue
                y = np.zeros(r)
                y[J] = yJ
                value = float(y @ S @ y)
                if negative and m.below("copositivity: witness y'Sy", value, tol * (y @ y)):
                    return CopositivityResult(NOT, y, value, "enumeration", work, m.items())
                if not negative:
                    zero_witness = (y, value)
    if zero_witness is not None:
        return CopositivityResult(COPOSITIVE, zero_witness[0], zero_witness[1], "enumeration", work, m.items())
    return CopositivityResult(STRICT, None, None, "enumeration", work, m.items())


def copositivity_milp(S: np.ndarray, tol: float, time_limit: float = 60.0,
                      margins: Margins | None = None) -> CopositivityResult:
    """``min y'Sy`` over the simplex, exactly, as a MILP on the KKT conditions."""
    m = Margins() if margins is None else margins
    r = S.shape[0]
    smax = float(np.max(np.abs(S))) or 1.0
    big = 2.0 * smax * (1 + 1e-6) + 1e-12
    # variables: y (r), mu (1), lam (r), b (r)
    n = 3 * r + 1
    iy, imu, il, ib = np.arange(r), r, r + 1 + np.arange(r), 2 * r + 1 + np.arange(r)
    rows, lo, hi = [], [], []
    for i in range(r):  # S y - mu - lam = 0
        row = np.zeros(n)
        row[iy] = S[i]
        row[imu] = -1.0
        row[il[i]] = -1.0
        rows.append(row), lo.append(0.0), hi.append(0.0)
    row = np.zeros(n)
    row[iy] = 1.0
    rows.append(row), lo.append(1.0), hi.append(1.0)
    for i in range(r):  # y_i <= b_i ; lam_i <= big (1 - b_i)
        row = np.zeros(n)
        row[iy[i]], row[ib[i]] = 1.0, -1.0
        rows.append(row), lo.append(-np.inf), hi.append(0.0)
        row = np.zeros(n)
        row[il[i]], row[ib[i]] = 1.0, big
        rows.append(row), lo.append(-np.inf), hi.append(big)
    c = np.zeros(n)
    c[imu] = 1.0
    lb = np.concatenate([np.zeros(r), [-smax], np.zeros(r), np.zeros(r)])
    ub = np.concatenate([np.ones(r), [smax], np.full(r, big), np.ones(r)])
    integrality = np.zeros(n)
    integrality[ib] = 1
    res = milp(
        c, constraints=LinearConstraint(np.array(rows), lo, hi), integrality=integrality,
        bounds=Bounds(lb, ub), options={"time_limit": time_limit, "mip_rel_gap": 0.0},
    )
    if res.status != 0 or res.x is None:
        return CopositivityResult(UNKNOWN, None, None, f"milp ({res.message})", 1, m.items())
    y = np.clip(res.x[iy], 0, None)
    y = y / y.sum()
    value = float(y @ S @ y)
    m.add("copositivity: simplex minimum", value, tol)
    if value < -tol:
        return CopositivityResult(NOT, y, value, "milp", 1, m.items())
    if value <= tol:
        return CopositivityResult(COPOSITIVE, y, value, "milp", 1, m.items())
    return CopositivityResult(STRICT, None, value, "milp", 1, m.items())


def _unit(r: int, i: int) -> np.ndarray:
    y = np.zeros(r)
    y[i] = 1.0
    return y


def copositivity_pretests(S: np.ndarray, tol: float, margins: Margins | None = None) -> CopositivityResult | None:
    """Sufficient conditions that decide many matrices in ``O(r^3)``; None when none applies.

    Not copositive: a diagonal entry ``< -tol``; a pair ``(i, j)`` whose 2x2 block is negative at
    its simplex minimizer; an eigenvector of a negative eigenvalue that is one-signed. Strictly
    copositive: ``lambda_min(S) > tol`` (positive definite), or all entries ``>= 0`` with a
    diagonal ``> tol``; copositive: all entries ``>= -tol`` and a diagonal entry ``<= tol``.
    Positive semidefinite to ``tol``: the convex minimum of ``y'Sy`` over the simplex decides
    (copositive with that ``y`` as witness when it is ``<= tol``, else strict).
    """
    m = Margins() if margins is None else margins
    r = S.shape[0]
    d = np.diag(S)
    i = int(np.argmin(d))
    if m.below("copositivity: diagonal", d[i], tol):
        return CopositivityResult(NOT, _unit(r, i), float(d[i]), "pretest: negative diagonal", 1, m.items())
    # 2x2 blocks: min over the simplex of [t, 1-t] S_ij [t, 1-t]' at t = (d_j - s) / (d_i + d_j - 2 s)
    # when s = S_ij < 0 (then the denominator is positive); vectorized over all pairs.
    den = d[:, None] + d[None, :] - 2.0 * S
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where((S < 0) & (den > 0), (d[None, :] - S) / den, 0.0)
    t = np.clip(t, 0.0, 1.0)
    val = t * t * d[:, None] + (1 - t) ** 2 * d[None, :] + 2 * t * (1 - t) * S
    np.fill_diagonal(val, np.inf)
    a, b = np.unravel_index(int(np.argmin(val)), val.shape)
    if m.below("copositivity: 2x2 block", val[a, b], tol):
        y = np.zeros(r)
        y[a], y[b] = t[a, b], 1.0 - t[a, b]
        return CopositivityResult(NOT, y, float(y @ S @ y), "pretest: 2x2 block", 1, m.items())
    if not m.below("copositivity: smallest entry", np.min(S), tol):
        j = int(np.argmin(d))
        if m.at_most("copositivity: diagonal", d[j], tol):
            return CopositivityResult(COPOSITIVE, _unit(r, j), float(d[j]), "pretest: nonnegative entries", 1,
                                      m.items())
        if np.all(S >= 0):
            # a nonnegative eigenvector of a principal submatrix is a Perron vector of one of its
            # irreducible blocks, whose eigenvalue is at least that block's largest diagonal entry
            return CopositivityResult(STRICT, None, None, "pretest: nonnegative entries", 1, m.items())
    lam, vec = np.linalg.eigh(S)
    m.add("copositivity: smallest eigenvalue", lam[0], tol)
    if lam[0] > tol:
        return CopositivityResult(STRICT, None, None, "pretest: positive definite", 1, m.items())
    if lam[0] < -tol:
        y = _nonneg_in_span(vec[:, :1])
        if y is not None and m.below("copositivity: witness y'Sy", y @ S @ y, tol * (y @ y)):
            return CopositivityResult(NOT, y, float(y @ S @ y), "pretest: one-signed eigenvector", 1, m.items())
        return None
    # positive semidefinite to tol: min over the simplex of y'Sy is a convex problem, solved as a
    # nonnegative least-squares problem |R y|^2 with S ~ R'R and a heavily weighted row sum y = 1
    R = np.sqrt(np.clip(lam, 0.0, None))[:, None] * vec.T
    w = 1e4 * max(1.0, float(np.sqrt(np.max(np.abs(lam)))))
    y, _ = nnls(np.vstack([R, np.full((1, r), w)]), np.concatenate([np.zeros(r), [w]]))
    if y.sum() <= 0:
        return None
    y = y / y.sum()
    value = float(y @ S @ y)
    if m.at_most("copositivity: simplex minimum", value, tol):
        return CopositivityResult(COPOSITIVE, y, value, "pretest: positive semidefinite", 1, m.items())
    return CopositivityResult(STRICT, None, value, "pretest: positive semidefinite", 1, m.items())


def copositivity(S: np.ndarray, tol: float, max_subsets: int, time_limit: float = 60.0) -> CopositivityResult:
    """The pre-tests, then enumeration when ``2^r - 1 <= max_subsets``, else the MILP."""
    r = S.shape[0]
    if r == 0:
        return CopositivityResult(STRICT, None, None, "empty", 0)
    m = Margins()
    decided = copositivity_pretests(S, tol, m)
    if decided is not None:
        return decided
    if 2.0**r - 1 <= max_subsets:
        return copositivity_enumerate(S, tol, m)
    return copositivity_milp(S, tol, time_limit, m)


def orthant_lower_bound(S: np.ndarray, time_limit: float = 60.0) -> float | None:
    """A lower bound of ``min y'Sy`` over ``y >= 0``, ``|y|_2 = 1`` (how strictly ``S`` is copositive), or None.

    The largest of the bounds that apply: ``lambda_min(S)`` when positive; with nonnegative off-diagonal
    entries the smallest diagonal entry (``y'Sy >= sum_i S_ii y_i^2``); and, when neither exceeds
    ``1e-6 |S|`` (a positive ``lambda_min`` at rounding level proves little), the minimum ``v`` over the
    simplex (the MILP of :func:`copositivity_milp`), since ``y'Sy >= v (sum y)^2 >= v |y|^2`` for
    ``y >= 0`` when ``v > 0``. None when none of them is positive (not strictly copositive, or the MILP
    failed).
    """
    if S.size == 0:
        return None
    ev = np.linalg.eigvalsh(S)
    bounds = [float(ev[0])]
    off = S - np.diag(np.diag(S))
    if np.all(off >= 0):
        bounds.append(float(np.min(np.diag(S))))
    if max(bounds) <= 1e-6 * max(abs(float(ev[0])), abs(float(ev[-1]))):  # |S|_2 of a symmetric S
        res = copositivity_milp(S, 0.0, time_limit)
        bounds.append(res.value if res.value is not None else -math.inf)
    best = max(bounds)
    return best if best > 0 else None
