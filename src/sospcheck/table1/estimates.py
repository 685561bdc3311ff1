"""The paper's threshold estimates of M, L, K at raw trained weights (Yun, Sra & Jadbabaie 2019, section 4).

``M_k = #{i : |N_ik| < 1e-5}``; per neuron the convex QP ``s* = argmin_{s in [s_lo, s_hi]^{M_k}}
|c_k + sum_{i in B_k} s_i a_ik xbar_i|^2`` (``a_ik = w_k . grad l_i``); ``K = #{|a_ik| < 1e-4}``,
``L - K = #{s*_i at a bound, |a_ik| >= 1e-4}``. Risk in the sum convention ``sum_i l_i + (m lam/2)|z|^2``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import lsq_linear

from ..losses import get_loss

__all__ = ["PaperEstimates", "paper_estimates", "BOUNDARY_TOL", "A_ZERO_TOL", "S_BOUND_TOL"]

BOUNDARY_TOL = 1e-5   # |N_ik| below this: on the kink (the paper's threshold, absolute)
A_ZERO_TOL = 1e-4     # |w_k . grad l_i| below this: a K pair (the paper's threshold, absolute)
S_BOUND_TOL = 1e-6    # s*_i within this of s_lo or s_hi (times s_hi - s_lo): "at 0 or 1"


@dataclass(frozen=True)
class PaperEstimates:
    """Threshold counts; ``qp_residual[k] = |c_k + A_k s*|`` and ``qp_scale[k] = |c_k| + |A_k|_F``."""

    M: int
    L: int
    K: int
    L_minus_K: int
    M_k: list
    qp_residual: list
    qp_scale: list

    @property
    def qp_relative_max(self) -> float:
        rel = [r / s for r, s in zip(self.qp_residual, self.qp_scale) if s > 0]
        return float(max(rel)) if rel else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["qp_relative_max"] = self.qp_relative_max
        return d


def paper_estimates(W1, b1, W2, b2, X, Y, loss: str = "squared", s_minus: float = 0.0, s_plus: float = 1.0,
                    weight_decay: float = 0.0, boundary_tol: float = BOUNDARY_TOL, a_zero_tol: float = A_ZERO_TOL,
                    s_bound_tol: float = S_BOUND_TOL) -> PaperEstimates:
    """M, L, K by the paper's fixed thresholds, from the raw weights (no snapping)."""
    W1, b1, W2, b2 = (np.asarray(v, dtype=np.float64) for v in (W1, b1, W2, b2))
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != W1.shape[1]:
        raise ValueError(f"`X` must have shape (m, {W1.shape[1]}), got {X.shape}")
    lossobj = get_loss(loss)
    Yp = lossobj.prepare(Y, W2.shape[0])
    m = X.shape[0]
    Xbar = np.hstack([X, np.ones((m, 1))])
    Z = np.hstack([W1, b1[:, None]])
    N = Xbar @ Z.T                                                     # (m, dh)
    out = np.where(N > 0, s_plus, s_minus) * N @ W2.T + b2
    r = lossobj.grad(out, Yp)                                          # grad l_i, (m, dy)
    a = r @ W2                                                         # a_ik = w_k . r_i
    on = np.abs(N) < boundary_tol
    slope = np.where(on, 0.0, np.where(N > 0, s_plus, s_minus))
    C = (slope * a).T @ Xbar + m * weight_decay * Z                    # c_k, (dh, dx+1)
    s_lo, s_hi = sorted((s_minus, s_plus))
    M_k, L, K, LmK, res, scale = [], 0, 0, 0, [], []
    for k in range(W1.shape[0]):
        idx = np.flatnonzero(on[:, k])
        M_k.append(int(idx.size))
        aB = a[idx, k]
        A = Xbar[idx].T * aB[None, :]
        if idx.size and np.any(A):
            method = "bvls" if idx.size <= 200 else "trf"
            s = lsq_linear(A, -C[k], bounds=(s_lo, s_hi), method=method, tol=1e-12).x
        else:
            s = np.full(idx.size, 0.5 * (s_lo + s_hi))
        res.append(float(np.linalg.norm(C[k] + A @ s)))
        scale.append(float(np.linalg.norm(C[k]) + np.linalg.norm(A)))
        small = np.abs(aB) < a_zero_tol
        at_bound = (s - s_lo <= s_bound_tol * (s_hi - s_lo)) | (s_hi - s <= s_bound_tol * (s_hi - s_lo))
        K += int(small.sum())
        LmK += int((at_bound & ~small).sum())
    L = LmK + K
    return PaperEstimates(int(sum(M_k)), int(L), int(K), int(LmK), M_k, res, scale)
