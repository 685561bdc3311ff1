"""Moving a trained point onto its nearby kinks (DESIGN.md section 4, "Snap").

Trained weights never put data exactly on a kink. For each neuron ``k`` the near-boundary set
``S_k = {i : |N_ik| <= tol * |Z_k| * max|xbar|}`` is moved onto the kink by the minimum-norm change
``dZ_k = -pinv(X_S) N_S`` (so ``(Z_k + dZ_k) . xbar_i = 0`` for ``i in S_k``); the output layer,
a convex problem once the hidden features are fixed, is then refit, but only when the refit moves
``[W2 b2]`` by at most ``refit_radius`` (default ``tol * |z|``; the check's nearby mode passes
``nearby_radius * |z|``): a far refit would put the verdict on a point that is not the user's
(``SnapInfo.refit`` says whether it was kept).

A point can be near the kink by chance (at m = 10^4 a few points fall within 1e-5 of any
hyperplane). Together with the genuine kink points they may span every direction, and then the
only solution is ``Z_k + dZ_k = 0``: the neuron collapses. So the move is capped: ``|dZ_k| <=
tol * |Z_k|``, the snap's own scale. When the whole set would need more, points are taken in order
of ``|N_ik|`` and the longest run whose move stays within the cap is kept; the others stay where
they are (off the kink, reported in ``SnapInfo.dropped``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from .geometry import row_norms
from .losses import Loss
from .model import TwoLayerNet, forward

__all__ = ["SnapInfo", "snap_to_kinks", "refit_output_layer"]


@dataclass(frozen=True)
class SnapInfo:
    """What snapping changed: pairs moved, weight distances, risk before and after. ``refit``: the
    output-layer refit was kept (its move ``refit_move`` was within ``refit_radius``); otherwise the
    output layer is the user's and ``dW2_norm = db2_norm = 0``."""

    n_pairs: int
    per_neuron: list
    dZ_norm: float
    dW2_norm: float
    db2_norm: float
    max_residual: float
    dropped: list
    loss_before: float
    loss_after: float
    tol: float
    refit_converged: bool
    sign_changes: int
    refit: bool = True
    refit_move: float = 0.0
    refit_radius: float = float("inf")

    @property
    def moved(self) -> bool:
        """The snapped point differs from the user's weights."""
        return bool(self.dZ_norm > 0 or self.dW2_norm > 0 or self.db2_norm > 0)

    def to_dict(self) -> dict:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}


def refit_output_layer(net: TwoLayerNet, X: np.ndarray, Y: np.ndarray, loss: Loss, weight: float,
                       weight_decay: float) -> tuple[TwoLayerNet, bool]:
    """``argmin_{W2, b2} R``: least squares for the squared loss, Newton-CG otherwise."""
    O = forward(net, X).O
    F = np.hstack([O, np.ones((O.shape[0], 1))]) if net.has_b2 else O
    dh, nf = net.dh, F.shape[1]

    def weights(T):  # T: (dy, nf)
        return dict(W2=T[:, :dh], b2=T[:, dh] if net.has_b2 else None)

    Theta0 = (np.hstack([net.W2, net.b2[:, None]]) if net.has_b2 else np.array(net.W2)).T  # (nf, dy)
    if loss.name == "squared":
        # least squares on F itself (not the normal equations), as the smallest change from the
        # current output layer: aligned features make F ill-conditioned and the change arbitrary
        A = np.vstack([np.sqrt(weight) * F, np.sqrt(weight_decay) * np.eye(nf)])
        rhs = np.vstack([np.sqrt(weight) * (Y - F @ Theta0), -np.sqrt(weight_decay) * Theta0])
        delta = np.linalg.lstsq(A, rhs, rcond=1e-12)[0]
        return net.with_weights(**weights((Theta0 + delta).T)), True

    def unpack(x):
        return x.reshape(net.dy, nf)

    def fun(x):
        T = unpack(x)
        out = F @ T.T
        val = weight * float(np.sum(loss.value(out, Y))) + 0.5 * weight_decay * float(x @ x)
        grad = weight * (loss.grad(out, Y).T @ F) + weight_decay * T
        return val, grad.ravel()

    def hessp(x, p):
        T, P = unpack(x), unpack(p)
        out = F @ T.T
        dout = F @ P.T
        Hd = np.einsum("icd,id->ic", loss.hess(out, Y), dout)
        return (weight * (Hd.T @ F) + weight_decay * P).ravel()

    x0 = (np.hstack([net.W2, net.b2[:, None]]) if net.has_b2 else net.W2).ravel()
    res = minimize(fun, x0, jac=True, hessp=hessp, method="trust-ncg", options={"gtol": 1e-12, "maxiter": 500})
    T = unpack(res.x)
    # trust-ncg reports a "failure" when rounding stops progress at an already tiny gradient
    converged = bool(res.success or np.linalg.norm(res.jac) <= 1e-8 * (1.0 + abs(res.fun)))
    return net.with_weights(**weights(T)), converged


def _min_norm_move(XS: np.ndarray, NS: np.ndarray) -> np.ndarray:
    return -np.linalg.lstsq(XS, NS, rcond=None)[0]


def _capped_snap(XS: np.ndarray, NS: np.ndarray, cap: float) -> tuple[np.ndarray, np.ndarray]:
    """Which near points to put on the kink (a boolean mask) and the move ``dz``, ``|dz| <= cap``.

    The points are taken in order of ``|N|`` and the longest prefix within the cap is kept. The
    minimum-norm move of a prefix never shrinks as points are added (each adds a constraint), so
    a bisection finds that prefix with ``O(log |S|)`` least-squares solves. (That holds while the
    prefix's system is consistent; past that the solve is a least-squares fit and the bisection a
    heuristic, which only changes which points stay off the kink, never the cap.)
    """
    keep = np.ones(NS.size, dtype=bool)
    if NS.size == 0:
        return keep, np.zeros(XS.shape[1])
    dz = _min_norm_move(XS, NS)
    if np.linalg.norm(dz) <= cap:
        return keep, dz
    order = np.argsort(np.abs(NS), kind="stable")
    lo, hi, best = 0, NS.size - 1, np.zeros(XS.shape[1])  # the prefix of length lo fits, hi + 1 does not
    while lo < hi:
        mid = (lo + hi + 1) // 2
        trial = _min_norm_move(XS[order[:mid]], NS[order[:mid]])
        if np.linalg.norm(trial) <= cap:
            lo, best = mid, trial
        else:
            hi = mid - 1
    keep[:] = False
    keep[order[:lo]] = True
    return keep, best


def snap_to_kinks(net: TwoLayerNet, X: np.ndarray, Y: np.ndarray, loss: Loss, weight: float,
                  weight_decay: float, tol: float = 1e-5,
                  refit_radius: float | None = None) -> tuple[TwoLayerNet, SnapInfo]:
    """Put each neuron's near-boundary points exactly on its kink, then refit ``W2, b2`` when that
    moves them by at most ``refit_radius`` (default ``tol * |z|``, the snap's own scale)."""
    from .losses import risk

    fwd = forward(net, X)
    Xbar, N = fwd.Xbar, fwd.N
    xmax = np.max(row_norms(Xbar))
    Z = net.Z.copy()
    per_neuron, dropped, max_res, n_pairs = [], [], 0.0, 0
    for k in range(net.dh):
        zk = float(np.linalg.norm(Z[k]))
        near = np.flatnonzero(np.abs(N[:, k]) <= tol * zk * xmax)
        kept, dz = _capped_snap(Xbar[near], N[near, k], tol * zk)
        near = near[kept]
        per_neuron.append(int(near.size))
        dropped.append(int(kept.size - near.size))
        n_pairs += int(near.size)
        if near.size == 0 or not np.any(N[near, k]):
            continue
        Z[k] = Z[k] + dz
        max_res = max(max_res, float(np.max(np.abs(Xbar[near] @ Z[k]))) / (np.linalg.norm(Z[k]) * xmax or 1.0))
    moved = net.with_weights(W1=Z[:, :-1], b1=Z[:, -1]) if net.has_b1 else net.with_weights(W1=Z)
    N_new = forward(moved, X).N
    sign_changes = int(np.sum((np.sign(N_new) != np.sign(N)) & (np.abs(N) > tol * xmax * np.linalg.norm(net.Z, axis=1))))
    refit, ok = refit_output_layer(moved, X, Y, loss, weight, weight_decay)
    bound = tol * net.as_direction().norm() if refit_radius is None else float(refit_radius)
    move = float(np.sqrt(np.sum((refit.W2 - net.W2) ** 2) + (np.sum((refit.b2 - net.b2) ** 2) if net.has_b2 else 0.0)))
    kept = bool(move <= bound)
    if not kept:
        refit = moved
    info = SnapInfo(
        n_pairs, per_neuron, float(np.linalg.norm(refit.Z - net.Z)), float(np.linalg.norm(refit.W2 - net.W2)),
        float(np.linalg.norm(refit.b2 - net.b2)) if net.has_b2 else 0.0, max_res, dropped,
        risk(net, X, Y, loss, weight, weight_decay), risk(refit, X, Y, loss, weight, weight_decay), tol, ok,
        sign_changes, kept, move, bound,
    )
    return refit, info
