"""Boundary sets, the data's affine hull, and the extreme rays of the sign cones (DESIGN.md sections 1, 3 step 3, 4)."""

from __future__ import annotations

import numpy as np

__all__ = ["boundary_mask", "data_span", "ray_directions", "validity_radius"]


def boundary_mask(N: np.ndarray, Z: np.ndarray, Xbar: np.ndarray, tol: float) -> np.ndarray:
    """``B[i, k] = |N_ik| <= tol * |Z_k| * max_i |xbar_i|`` (m, dh)."""
    scale = np.linalg.norm(Z, axis=1) * np.max(np.linalg.norm(Xbar, axis=1))
    return np.abs(N) <= tol * scale[None, :]


def data_span(Xbar: np.ndarray, rank_tol: float) -> np.ndarray:
    """Orthonormal basis ``V`` (d x rho) of the row space of ``Xbar``.

    Components of ``Z_k`` orthogonal to every ``xbar_i`` never change ``N_ik``: working in
    ``v_k = V nu_k`` quotients out these exactly flat directions (the affine hull of the data).
    """
    _, s, Vt = np.linalg.svd(Xbar, full_matrices=False)
    rho = int(np.sum(s > rank_tol * s[0])) if s.size and s[0] > 0 else 0
    return Vt[:rho].T


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
    over the pairs moving towards their kink."""
    moving = (~boundary) & (N * T < 0)
    if not np.any(moving):
        return float("inf")
    return float(np.min(np.abs(N[moving]) / np.abs(T[moving])))
