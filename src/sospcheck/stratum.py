"""Converge on the current stratum: the nearby point that is stationary to rounding with the kink
points held on their kinks and every other sign kept (DESIGN.md section 8).

The stratum of weights ``z`` and a boundary mask ``B`` (m, dh) is

    {z' : Z'_k . xbar_i = 0 for (i, k) in B,  sign(Z'_k . xbar_i) = sign(Z_k . xbar_i) otherwise}.

On it every held pair contributes nothing (``N_ik = 0``) and every other pair has a fixed slope, so
the outputs are a polynomial in the weights and ``R`` is smooth. :func:`converge_on_stratum` puts the
held pairs exactly on their kinks (the orthogonal projection of each ``Z_k`` onto ``{v : Xbar_{B_k} v
= 0}``), then runs Levenberg-Marquardt on the stationarity equations ``g(theta) = 0`` of the
restricted risk, in the coordinates ``Z_k = Z0_k + U_k c_k`` (``U_k`` an orthonormal basis of that
null space), ``W2``, ``b2``. It stops, and says why (:class:`StratumStatus`), at a point stationary
to rounding, or when the iteration would leave the stratum or a ball around the start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import scipy.sparse as sp
from scipy.linalg import null_space

from .augmented import frobenius_norm
from .geometry import row_norms
from .loss_change import risk_change
from .losses import Loss
from .model import TwoLayerNet, as_float_array
from .stratum_solvers import DenseSolver, MatrixFreeSolver

__all__ = ["StratumStatus", "StratumStep", "StratumPoint", "converge_on_stratum", "NEARBY_RADIUS"]

#: default ``radius`` relative to ``|z|``: the largest move to a point still called "nearby"
NEARBY_RADIUS = 1e-3

class StratumStatus(str, Enum):
    """Why :func:`converge_on_stratum` stopped. Only ``converged`` and ``rounding_floor`` are successes."""

    CONVERGED = "converged"  # relative gradient <= gtol
    ROUNDING_FLOOR = "rounding_floor"  # the gradient stopped falling at a relative level <= floor_tol
    LEFT_STRATUM = "left_stratum"  # the next step (or the projection) moves a neuron across a data point
    RADIUS_EXCEEDED = "radius_exceeded"  # the next step (or the projection) leaves the ball |z' - z| <= radius
    MAX_ITERATIONS = "max_iterations"
    NO_PROGRESS = "no_progress"  # the gradient stopped falling above floor_tol

    @property
    def success(self) -> bool:
        return self in (StratumStatus.CONVERGED, StratumStatus.ROUNDING_FLOOR)


@dataclass(frozen=True)
class StratumStep:
    """One trial of the iteration (``step`` 0: the projected start). ``loss_change``: ``R(z_j) - R(z)``
    from the user's point, below rounding; ``gradient``: ``|g|`` on the stratum at the trial point,
    ``relative_gradient`` over its natural scale; ``step_norm``: ``|z_j - z_{j-1}|``; ``damping``: the
    Levenberg-Marquardt ``mu`` (dense solver; 0 for matrix-free), ``fraction``: the part of the
    Newton-MINRES step taken (matrix-free; 1 for dense); ``fresh``: the Hessian was evaluated at
    ``z_{j-1}``; ``accepted``:
    the trial lowered ``|g|`` and became the iterate."""

    step: int
    loss: float
    loss_change: float
    gradient: float
    relative_gradient: float
    step_norm: float
    damping: float
    fraction: float
    fresh: bool
    accepted: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True, eq=False)
class StratumPoint:
    """The outcome of :func:`converge_on_stratum`.

    ``net``: the last accepted iterate ``z*`` (on failure: the last iterate, the projected start if no
    step was taken, about which nothing is claimed). ``distance`` / ``relative_distance``: ``|z* - z|`` and that
    over ``|z|``; ``loss_change``: ``R(z*) - R(z)`` below rounding; ``steps``: accepted steps;
    ``gradient`` / ``relative_gradient`` / ``gradient_scale``: ``|g|`` on the stratum at ``z*``, over
    the scale of DESIGN.md 8.3; ``kink_residual``: ``max |N_ik| / (|xbar_i| |Z_k|)`` over held pairs of
    nonzero neurons at ``z*``; ``projection``: the length of the move onto the kinks; ``crossing``:
    ``(i, k)`` of the pair that would change sign (``left_stratum``); ``boundary``: the mask used
    (the given one plus any off-mask pair that was exactly on its kink); ``solver``: "dense" or
    "matrix_free"."""

    net: TwoLayerNet
    status: StratumStatus
    message: str
    distance: float
    relative_distance: float
    loss_change: float
    steps: int
    gradient: float
    relative_gradient: float
    gradient_scale: float
    kink_residual: float
    projection: float
    radius: float
    boundary: np.ndarray
    solver: str
    history: tuple = field(default=())
    crossing: tuple | None = None

    @property
    def success(self) -> bool:
        return self.status.success

    @property
    def residual(self) -> float:
        """The relative gradient at ``z*`` (the JSON ``residual`` of issue 13)."""
        return self.relative_gradient

    def to_dict(self) -> dict:
        return {
            "status": self.status.value, "success": self.success, "message": self.message,
            "distance": self.distance, "relative_distance": self.relative_distance,
            "loss_change": self.loss_change, "steps": self.steps, "gradient": self.gradient,
            "relative_gradient": self.relative_gradient, "gradient_scale": self.gradient_scale,
            "kink_residual": self.kink_residual, "projection": self.projection, "radius": self.radius,
            "solver": self.solver, "crossing": None if self.crossing is None else list(self.crossing),
            "held_pairs": int(self.boundary.sum()), "history": [h.to_dict() for h in self.history],
        }


# ------------------------------------------------------------------------------------ the stratum
class _Stratum:
    """Coordinates ``theta = [vec W2, c_1 .. c_dh, b2]`` with ``Z_k = Z0_k + U_k c_k``; the full
    coordinates of :class:`HessianOperator` are ``[vec W2, vec Z, b2]``, so ``full = P theta``."""

    def __init__(self, net: TwoLayerNet, Xbar: np.ndarray, B: np.ndarray, Z0: np.ndarray, bases: list):
        self.net, self.Xbar, self.B, self.Z0, self.bases = net, Xbar, B, Z0, bases
        self.dy, self.dh, self.d = net.dy, net.dh, Xbar.shape[1]
        self.sizes = [U.shape[1] for U in bases]
        self.n_w2 = self.dy * self.dh
        self.offsets = self.n_w2 + np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.n = int(self.offsets[-1]) + (self.dy if net.has_b2 else 0)
        N0 = Xbar @ Z0.T
        # fixed slopes of the stratum: the sign of each off-kink pair; held pairs contribute nothing
        self.S = np.where(B, 0.0, net.slope(N0))
        self.N0, self.positive = N0, N0 > 0
        blocks = [sp.identity(self.n_w2)] + [sp.csr_matrix(U) for U in bases]
        if net.has_b2:
            blocks.append(sp.identity(self.dy))
        self.P = sp.block_diag(blocks, format="csr")

    def theta0(self) -> np.ndarray:
        parts = [self.net.W2.ravel(), np.zeros(self.n - self.n_w2 - (self.dy if self.net.has_b2 else 0))]
        if self.net.has_b2:
            parts.append(self.net.b2)
        return np.concatenate(parts)

    def weights(self, theta: np.ndarray):
        W2 = theta[:self.n_w2].reshape(self.dy, self.dh)
        Z = np.array(self.Z0)
        for k, U in enumerate(self.bases):
            if U.shape[1]:
                Z[k] += U @ theta[self.offsets[k]:self.offsets[k + 1]]
        b2 = theta[self.offsets[-1]:] if self.net.has_b2 else None
        return Z, W2, b2

    def net_at(self, theta: np.ndarray) -> TwoLayerNet:
        Z, W2, b2 = self.weights(theta)
        if self.net.has_b1:
            return self.net.with_weights(W1=Z[:, :-1], b1=Z[:, -1], W2=W2, b2=b2)
        return self.net.with_weights(W1=Z, W2=W2, b2=b2)

    def restrict(self, full: np.ndarray) -> np.ndarray:
        return self.P.T @ full

    def symmetry_basis(self, theta: np.ndarray) -> np.ndarray:
        """Orthonormal basis (n, q) of the tangents ``(w_k, -Z_k)`` of the rescaling orbits
        ``(c w_k, Z_k / c)``, along which ``R`` is constant without weight decay (DESIGN.md 8.2)."""
        Z, W2, _ = self.weights(theta)
        cols = []
        for k, U in enumerate(self.bases):
            t = np.zeros(self.n)
            t[np.arange(self.dy) * self.dh + k] = W2[:, k]
            t[self.offsets[k]:self.offsets[k + 1]] = -(U.T @ Z[k])  # Z_k lies in range(U_k)
            if np.any(t):
                cols.append(t)
        if not cols:
            return np.zeros((self.n, 0))
        return np.linalg.qr(np.column_stack(cols))[0]

    def dZ(self, dtheta: np.ndarray) -> np.ndarray:
        return (self.P @ dtheta)[self.n_w2:self.n_w2 + self.dh * self.d].reshape(self.dh, self.d)


@dataclass
class _State:
    theta: np.ndarray
    N: np.ndarray
    O: np.ndarray
    out: np.ndarray
    r: np.ndarray
    Hl: np.ndarray
    g: np.ndarray
    gnorm: float
    scale: float
    loss: float
    W2: np.ndarray

    @property
    def rel(self) -> float:
        if self.gnorm == 0:
            return 0.0
        return self.gnorm / self.scale if self.scale > 0 else math.inf


def _evaluate(st: _Stratum, theta: np.ndarray, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float,
              lam: float) -> _State:
    """One pass over the data on the stratum: outputs with the stratum's slopes, the gradient in
    ``theta`` and its natural scale (DESIGN.md 8.3)."""
    Z, W2, b2 = st.weights(theta)
    N = st.Xbar @ Z.T
    O = st.S * N
    out = O @ W2.T + (b2 if b2 is not None else 0.0)
    r = weight * np.asarray(loss.grad(out, Yp), dtype=float)
    Hl = weight * np.asarray(loss.hess(out, Yp), dtype=float)
    a = r @ W2  # (m, dh)
    GZ = (a * st.S).T @ st.Xbar + lam * Z
    GW2 = r.T @ O + lam * W2
    parts = [GW2.ravel(), GZ.ravel()]
    if b2 is not None:
        parts.append(r.sum(axis=0) + lam * b2)
    g = st.restrict(np.concatenate(parts))
    # |r| plus the change of r that a relative change of the outputs of order one would make: the
    # rounding of the outputs (eps |out|) moves r by eps |H| |out|, which matters when r is small
    rho = np.linalg.norm(r) + math.sqrt(float(np.max(np.sum(Hl * Hl, axis=(1, 2))))) * np.linalg.norm(out)
    out_scale = rho * math.sqrt(np.linalg.norm(O) ** 2 + (st.Xbar.shape[0] if b2 is not None else 0))
    s_hi = max(st.net.s_plus, st.net.s_minus)
    neuron_scale = s_hi * rho * np.linalg.norm(W2, axis=0) * frobenius_norm(st.Xbar)
    scale = math.sqrt(out_scale**2 + float(np.sum(neuron_scale**2)))
    value = weight * math.fsum(np.asarray(loss.value(out, Yp), dtype=float).tolist())
    if lam:
        wsq = np.sum(Z**2) + np.sum(W2**2) + (np.sum(b2**2) if b2 is not None else 0.0)
        scale += lam * math.sqrt(wsq)
        value += 0.5 * lam * wsq
    return _State(theta, N, O, out, r, Hl, g, float(np.linalg.norm(g)), scale, value, W2)


def _first_crossing(N: np.ndarray, B: np.ndarray, T: np.ndarray) -> tuple[float, tuple | None]:
    """Largest ``t`` keeping every off-kink sign of ``N + t T`` (``geometry.validity_radius``) and the
    pair that reaches its kink first."""
    moving = (~B) & (N * T < 0)
    if not np.any(moving):
        return math.inf, None
    ratio = np.where(moving, np.abs(N) / np.where(moving, np.abs(T), 1.0), math.inf)
    i, k = np.unravel_index(int(np.argmin(ratio)), ratio.shape)
    return float(ratio[i, k]), (int(i), int(k))


def _ball_exit(a: np.ndarray, d: np.ndarray, radius: float) -> float:
    """Largest ``t`` in ``[0, inf)`` with ``|a + t d| <= radius`` (``|a| <= radius``)."""
    dd = float(d @ d)
    if dd == 0:
        return math.inf
    ad, aa = float(a @ d), float(a @ a)
    disc = ad * ad - dd * (aa - radius * radius)
    return (-ad + math.sqrt(max(disc, 0.0))) / dd


def _project(Z: np.ndarray, Xbar: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Each ``Z_k`` moved orthogonally onto ``{v : Xbar_{B_k} v = 0}``, with one step of iterative
    refinement so that the held ``N_ik`` are at the rounding of their own evaluation."""
    Z0 = np.array(Z)
    for k in range(Z.shape[0]):
        Xk = Xbar[B[:, k]]
        if Xk.shape[0] == 0:
            continue
        for _ in range(2):
            Z0[k] -= np.linalg.lstsq(Xk, Xk @ Z0[k], rcond=None)[0]
    return Z0


def _kink_residual(net: TwoLayerNet, Xbar: np.ndarray, B: np.ndarray) -> float:
    Z = net.Z
    zn = np.linalg.norm(Z, axis=1)
    held = B & (zn > 0)[None, :]
    if not np.any(held):
        return 0.0
    rel = np.abs(Xbar @ Z.T) / (row_norms(Xbar)[:, None] * np.where(zn > 0, zn, 1.0)[None, :])
    return float(np.max(rel[held]))


def _validate(net, X, Yp, boundary, weight, weight_decay) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(net, TwoLayerNet):
        raise TypeError(f"`net` must be a TwoLayerNet, got {type(net).__name__}")
    X = as_float_array(X, "X", 2)
    if X.shape[1] != net.dx:
        raise ValueError(f"`X` must have shape (m, {net.dx}) to match W1 {net.W1.shape}, got {X.shape}")
    Yp = as_float_array(Yp, "Yp", 2)
    if Yp.shape[0] != X.shape[0]:
        raise ValueError(f"`Yp` must have {X.shape[0]} rows (one per data point), got {Yp.shape}")
    B = (net.augment(X) @ net.Z.T) == 0 if boundary is None else np.asarray(boundary)
    if B.shape != (X.shape[0], net.dh) or B.dtype != bool:
        raise ValueError(f"`boundary` must be a boolean array of shape ({X.shape[0]}, {net.dh}), got "
                         f"{B.dtype} {B.shape}")
    for name, v in (("weight", weight), ("weight_decay", weight_decay)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"`{name}` must be a finite number >= 0, got {v!r}")
    return X, Yp, B


def converge_on_stratum(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float = 1.0,
                        weight_decay: float = 0.0, boundary: np.ndarray | None = None, *,
                        radius: float | None = None, nearby_radius: float = NEARBY_RADIUS, gtol: float = 1e-15,
                        floor_tol: float = 1e-12, max_iter: int = 50, rcond: float = 1e-12, solver: str = "auto",
                        max_dense: int = 3000, max_products: int = 2000) -> StratumPoint:
    """Move ``net`` to a nearby point of its stratum where the restricted gradient vanishes to
    rounding (DESIGN.md section 8).

    The pairs of ``boundary`` (m, dh) are put exactly on their kinks (orthogonal projection of each
    ``Z_k`` onto ``{v : Xbar_{B_k} v = 0}``). Then Levenberg-Marquardt on the stationarity equations
    ``g(theta) = 0``, ``g`` the gradient of ``R`` on the stratum, whose Jacobian is the exact restricted
    Hessian ``H`` with the rescaling orbits projected out (without weight decay):

        d = -sum_j l_j / (l_j^2 + mu) (v_j . g) v_j    over |l_j| > rcond max|l|,
        mu = nu max|l| |g| / |z|,

    ``nu`` divided by 10 after an accepted trial (``|g|`` fell), multiplied by 10 after a rejected
    one. ``mu ~ |g|`` keeps the convergence quadratic and stops the step from running along flat
    directions of a non-isolated solution set. ``H`` is re-evaluated only when a step with an old one
    contracts ``|g|`` by less than 4x (one factorisation usually serves every step).

    Stops (:class:`StratumStatus`) with
      - ``converged``: ``|g| <= gtol * scale``, ``scale`` the natural gradient scale of DESIGN.md 8.3;
      - ``rounding_floor``: two successive trials with a fresh ``H`` fail to halve ``|g|`` while
        ``|g| <= floor_tol * scale``; ``no_progress``: the same above ``floor_tol``;
      - ``max_iterations`` (trials, accepted or not);
      - ``left_stratum``: the projection or the next step changes the sign of an off-kink pair
        (moves a neuron across a data point); ``radius_exceeded``: it leaves ``|z' - z| <= radius``
        (default ``nearby_radius * |z|``); whichever of the two comes first along the step.

    Args:
        net: the user's weights ``z``. X: data (m, dx). Yp: targets prepared by ``loss.prepare``.
        loss: the per-sample loss. weight: reduction weight. weight_decay: ``lam``.
        boundary: pairs to hold on their kinks (``geometry.boundary_mask``); None: the pairs with
            ``N_ik == 0`` exactly. Off-mask pairs exactly on a kink are added to it.
        solver: "dense" (eigendecomposition of the restricted ``H``), "matrix_free" (MINRES on Hessian
            products, at most ``max_products`` per step, no ``mu``; a rejected step is shortened
            10x), or "auto" (dense up to ``max_dense`` coordinates).
    Returns:
        :class:`StratumPoint`; never raises for an iteration that fails (only for invalid input).
    """
    X, Yp, B = _validate(net, X, Yp, boundary, weight, weight_decay)
    if solver not in ("auto", "dense", "matrix_free"):
        raise ValueError(f"`solver` must be 'auto', 'dense' or 'matrix_free', got {solver!r}")
    lam = float(weight_decay)
    Xbar = net.augment(X)
    N_user = Xbar @ net.Z.T
    B = B | (N_user == 0)
    z_user = net.as_direction().vector()
    znorm = float(np.linalg.norm(z_user))
    radius = nearby_radius * znorm if radius is None else float(radius)

    Z0 = _project(net.Z, Xbar, B)
    bases = [null_space(Xbar[B[:, k]]) if B[:, k].any() else np.eye(Xbar.shape[1]) for k in range(net.dh)]
    st = _Stratum(net, Xbar, B, Z0, bases)
    theta = st.theta0()
    use_dense = solver == "dense" or (solver == "auto" and st.n <= max_dense)
    solver_name = "dense" if use_dense else "matrix_free"
    run = _Run(st, net, X, Yp, loss, weight, lam, z_user, znorm, radius, solver_name)
    cur = _evaluate(st, theta, X, Yp, loss, weight, lam)
    run.projection = projection = float(np.linalg.norm(Z0 - net.Z))
    run.record(cur, 0, projection, 0.0, 1.0, False, True)
    flipped = (~B) & (((N_user > 0) != st.positive) | (st.N0 == 0))
    if np.any(flipped):
        i, k = (int(v) for v in np.argwhere(flipped)[0])
        return run.finish(cur, StratumStatus.LEFT_STRATUM,
                          f"putting the held pairs on their kinks moves neuron {k} across data point {i}", (i, k))
    if projection > radius:
        return run.finish(cur, StratumStatus.RADIUS_EXCEEDED,
                          f"putting the held pairs on their kinks moves the weights by {projection:.3g} > radius "
                      f"{radius:.3g}")

    return _iterate(run, cur, DenseSolver if use_dense else MatrixFreeSolver, gtol, floor_tol, max_iter, rcond,
                    max_products)


def _iterate(run: "_Run", cur: _State, make, gtol: float, floor_tol: float, max_iter: int, rcond: float,
             max_products: int) -> StratumPoint:
    """The Levenberg-Marquardt loop of :func:`converge_on_stratum` from the projected start ``cur``."""
    st, B, lam, z_user, radius = run.st, run.st.B, run.lam, run.z_user, run.radius
    Xbar, X, Yp, loss, weight = run.st.Xbar, run.X, run.Yp, run.loss, run.weight
    lin = None
    zscale = run.znorm if run.znorm > 0 else 1.0
    nu, fresh, slow = 1.0, False, 0
    for it in range(1, max_iter + 1):
        if cur.rel <= gtol:
            break
        if lin is None:
            lin, fresh = make(st, cur, lam, rcond, max_products), True
        # mu ~ |g| (dense): a flat direction of a non-isolated solution set has a pseudo-eigenvalue of
        # order |g| / |z| near it, which this damping filters out while convergence stays quadratic
        d, mu, fraction = lin.step(cur.g, nu, cur.gnorm / zscale)
        T = Xbar @ st.dZ(d).T
        t_cross, pair = _first_crossing(cur.N, B, T)
        t_ball = _ball_exit(st.net_at(cur.theta).as_direction().vector() - z_user, _net_step(st, d), radius)
        if min(t_cross, t_ball) <= 1.0:
            if t_cross <= t_ball:
                i, k = pair
                return run.finish(cur, StratumStatus.LEFT_STRATUM,
                              f"step {it} would move neuron {k} across data point {i} (N from {cur.N[i, k]:.3g} to "
                              f"{cur.N[i, k] + T[i, k]:.3g}): no stationary point found on this stratum", pair)
            return run.finish(cur, StratumStatus.RADIUS_EXCEEDED,
                          f"step {it} would leave the ball of radius {radius:.3g} around the weights (relative "
                          f"gradient {cur.rel:.2g}): no stationary point found within it")
        trial = _evaluate(st, cur.theta + d, X, Yp, loss, weight, lam)
        flipped = (~B) & ((trial.N > 0) != st.positive) | ((~B) & (trial.N == 0))
        if np.any(flipped):  # t_cross > 1 up to rounding: a pair a hair from its kink
            i, k = (int(v) for v in np.argwhere(flipped)[0])
            return run.finish(cur, StratumStatus.LEFT_STRATUM,
                          f"step {it} would move neuron {k} onto or across data point {i}: no stationary point "
                          "found on this stratum", (i, k))
        accepted = trial.gnorm < cur.gnorm
        run.record(trial, it, float(np.linalg.norm(_net_step(st, d))), mu, fraction, fresh, accepted)
        if accepted:
            ratio, cur, nu = trial.gnorm / cur.gnorm, trial, max(lin.nu_min, nu / 10.0)
            if not fresh and ratio > 0.25:
                lin = None  # an old Hessian that no longer contracts well: re-evaluate it
                continue
            slow = slow + 1 if ratio > 0.5 else 0
            fresh = False
            if not lin.reuse:
                lin = None
        elif not fresh:
            lin = None  # retry from the same point with the Hessian evaluated there
            continue
        else:
            slow += 1
            nu *= 10.0
        if slow >= 2 and cur.rel > gtol:
            status = StratumStatus.ROUNDING_FLOOR if cur.rel <= floor_tol else StratumStatus.NO_PROGRESS
            return run.finish(cur, status, f"the relative gradient stopped falling at {cur.rel:.2g} "
                                       f"({'<=' if cur.rel <= floor_tol else '>'} floor_tol {floor_tol:.2g})")
    if cur.rel <= gtol:
        return run.finish(cur, StratumStatus.CONVERGED,
                      f"stationary on the stratum: relative gradient {cur.rel:.2g} <= {gtol:.2g}")
    return run.finish(cur, StratumStatus.MAX_ITERATIONS,
                  f"{max_iter} iterations without reaching a relative gradient of {gtol:.2g} (now {cur.rel:.2g})")


@dataclass
class _Run:
    """What one :func:`converge_on_stratum` call keeps: the stratum, the problem, the user's point and the
    history; ``finish`` makes the result."""

    st: _Stratum
    net: TwoLayerNet
    X: np.ndarray
    Yp: np.ndarray
    loss: Loss
    weight: float
    lam: float
    z_user: np.ndarray
    znorm: float
    radius: float
    solver_name: str
    projection: float = 0.0
    history: list = field(default_factory=list)

    def finish(self, state: _State, status: StratumStatus, message: str, crossing=None) -> StratumPoint:
        st, history = self.st, self.history
        at = st.net_at(state.theta)
        dist = float(np.linalg.norm(at.as_direction().vector() - self.z_user))
        return StratumPoint(
            at, status, message, dist, dist / self.znorm if self.znorm > 0 else math.inf,
            risk_change(self.net, at, self.X, self.Yp, self.loss, self.weight, self.lam),
            sum(h.accepted for h in history[1:]), state.gnorm, state.rel, state.scale,
            _kink_residual(at, st.Xbar, st.B), self.projection, self.radius, st.B, self.solver_name,
            tuple(history), crossing)

    def record(self, state: _State, step: int, step_norm: float, mu: float, fraction: float, fresh: bool,
               accepted: bool) -> None:
        at = self.st.net_at(state.theta)
        change = risk_change(self.net, at, self.X, self.Yp, self.loss, self.weight, self.lam)
        self.history.append(StratumStep(step, state.loss, change, state.gnorm, state.rel, step_norm, mu, fraction,
                                        fresh, accepted))


def _net_step(st: _Stratum, d: np.ndarray) -> np.ndarray:
    """The step ``d`` (in ``theta``) as a move of the weight vector ``[W1, b1, W2, b2]``."""
    dZ = st.dZ(d)
    parts = [dZ[:, :-1].ravel(), dZ[:, -1]] if st.net.has_b1 else [dZ.ravel()]
    parts.append(d[:st.n_w2])
    if st.net.has_b2:
        parts.append(d[st.offsets[-1]:])
    return np.concatenate(parts)
