"""Boundary sets, the data's affine hull, and the extreme rays of the sign cones (DESIGN.md sections 1, 3 step 3, 4)."""

from __future__ import annotations

import numpy as np

from .augmented import DataOperator, row_chunks

__all__ = ["boundary_mask", "boundary_threshold", "boundary_with_sides", "row_norms", "data_span", "row_space",
           "ray_directions", "validity_radius"]


def boundary_mask(N: np.ndarray, Z: np.ndarray, Xbar: np.ndarray, tol: float) -> np.ndarray:
    """``B[i, k] = |N_ik| <= tol * |Z_k| * max_i |xbar_i|`` (m, dh)."""
    return np.abs(N) <= boundary_threshold(Z, Xbar, tol)[None, :]


def boundary_threshold(Z: np.ndarray, Xbar: np.ndarray, tol: float) -> np.ndarray:
    """``tol * |Z_k| * max_i |xbar_i|`` per neuron."""
    return tol * (np.linalg.norm(Z, axis=1) * np.max(row_norms(Xbar)))


def boundary_with_sides(N: np.ndarray, Z: np.ndarray, Xbar: np.ndarray, tol: float) -> tuple[np.ndarray, ...]:
    """:func:`boundary_mask`, per neuron the largest ``|N_ik|`` on the boundary (-inf if none) and the
    smallest off it (inf if none), and the thresholds: the decisions nearest to the threshold from two
    masked reductions, instead of an (m, dh) array of ratios (a chunk of rows at a time: no (m, dh) float
    temporary). The mask is read-only."""
    threshold = boundary_threshold(Z, Xbar, tol)
    B = np.empty_like(N, dtype=bool)
    on, off = np.full(N.shape[1], -np.inf), np.full(N.shape[1], np.inf)
    for rows in row_chunks(N.shape[0], N.shape[1]):
        A = np.abs(N[rows])
        B[rows] = b = A <= threshold[None, :]
        on = np.maximum(on, np.max(A, axis=0, where=b, initial=-np.inf))
        off = np.minimum(off, np.min(A, axis=0, where=~b, initial=np.inf))
    B.flags.writeable = False  # the check's analyses share it; it keys the first order's memo (Point.memo)
    return B, on, off, threshold


def row_norms(A: np.ndarray) -> np.ndarray:
    """``|a_i|`` per row, without the m x d temporary of ``np.linalg.norm(A, axis=1)``."""
    if isinstance(A, DataOperator):
        return A.row_norms()
    return np.sqrt(np.einsum("ij,ij->i", A, A))


def data_span(Xbar: np.ndarray, rank_tol: float, gram: np.ndarray | None = None) -> np.ndarray:
    """Orthonormal basis ``V`` (d x rho) of the row space of ``Xbar``: the identity when that is all of ``R^d``.

    Components of ``Z_k`` orthogonal to every ``xbar_i`` never change ``N_ik``: working in
    ``v_k = V nu_k`` quotients out these exactly flat directions (the affine hull of the data,
    DESIGN.md section 4). A singular value counts when above ``rank_tol`` times the largest
    (:func:`row_space`). ``gram``: ``Xbar' Xbar`` when the caller has it.
    """
    V, _ = row_space(Xbar, rank_tol, gram)
    return np.eye(Xbar.shape[1]) if V is None else V


def row_space(A, rank_tol: float, gram: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """``(V, W)``: orthonormal bases (columns) of the row space of ``A`` (n x d) and of its orthogonal
    complement, a singular value counting when above ``rank_tol`` times the largest; ``V`` is None when
    the row space is all of ``R^d`` (``W`` is then d x 0). With ``gram`` given, ``A`` may be a function
    that returns the matrix, called only when the Gram alone cannot decide.

    From the d x d Gram ``A' A = U diag(lam) U'`` (one pass over the rows, no n x d factor): its
    eigenvalues give the singular values only to ``~ eps s_max^2 / s`` in absolute terms, so the
    directions with ``s < max(1e-3, 10 rank_tol) s_max`` are resolved again by the SVD of ``A U_small``
    (n x t, t usually 0), where the mixing of the Gram's rounding adds at most ``~ 1e3 eps s_max`` (far
    below the cut).
    """
    G = A.T @ A if gram is None else gram
    d = G.shape[0]
    lam = np.linalg.eigvalsh(G) if d else np.zeros(0)
    if not d or lam[-1] <= 0:
        return np.zeros((d, 0)), np.eye(d)
    # a direction the Gram alone resolves must also be clearly above the cut: ``reliable > rank_tol``
    reliable = max(_GRAM_RELIABLE, 10.0 * rank_tol)
    if lam[0] >= reliable**2 * lam[-1]:
        return None, np.zeros((d, 0))
    lam, U = np.linalg.eigh(G)  # the eigenvectors only when some direction needs a second look
    small = lam < reliable**2 * lam[-1]
    Us = U[:, small]
    _, s, Wt = np.linalg.svd((A() if callable(A) else A) @ Us)  # Wt: t x t
    r = int(np.sum(s > rank_tol * np.sqrt(lam[-1])))
    if r == Us.shape[1]:
        return None, np.zeros((d, 0))
    return np.hstack([U[:, ~small], Us @ Wt[:r].T]), Us @ Wt[r:].T


# singular values at least this fraction of the largest are resolved by the Gram's eigenvalues alone
_GRAM_RELIABLE = 1e-3


def ray_directions(Xk: np.ndarray, rank_tol: float) -> tuple[np.ndarray | None, int]:
    """``D_k = Xk' (Xk Xk')^{-1}`` whose column ``i`` has ``t_jk = delta_ij``, and ``rank(Xk)``.

    Returns ``(None, rank)`` when the boundary vectors are linearly dependent (Assumption 2 fails):
    then the ``+-vhat_i`` are not the extreme rays of every cone.
    """
    if Xk.shape[0] == 0:
        return np.zeros((Xk.shape[1], 0)), 0
    s = np.linalg.svd(Xk, compute_uv=False)
    rank = int(np.sum(s > rank_tol * max(s[0], 1e-300)))
    if rank < Xk.shape[0]:
        return None, rank
    return np.linalg.pinv(Xk), rank


def validity_radius(N: np.ndarray, boundary: np.ndarray, T: np.ndarray) -> float:
    """Largest ``t`` for which no off-kink ``N_ik + t T_ik`` changes sign: ``min |N_ik| / |T_ik|``
    over the pairs moving towards their kink (a chunk of rows at a time: the minimum is exact in any order)."""
    radius = np.inf
    for rows in row_chunks(N.shape[0], 2 * N.shape[1]):
        n, t = N[rows], T[rows]
        moving = (~boundary[rows]) & (n * t < 0)
        if np.any(moving):
            radius = min(radius, float(np.min(np.abs(n[moving]) / np.abs(t[moving]))))
    return float(radius)
