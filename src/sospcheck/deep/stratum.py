"""Converge on the current stratum of a deep network: the nearby point stationary to rounding with the held
pairs exactly on their kinks and every other sign kept (DESIGN.md section 10.11).

The stratum of weights ``theta`` and held pairs ``B`` (per hidden layer, m x n_l) is

    {theta' : N^l_ik(theta') = 0 for (i, l, k) in B,  sign N^l_ik(theta') = sign N^l_ik(theta) otherwise}.

On it every pair has a fixed slope (``0`` on held pairs: their activation is 0 whatever the slope), so
the risk ``f`` and the held pre-activations ``c(theta)`` are polynomials; unlike one hidden layer the
constraints ``c = 0`` are nonlinear. :func:`converge_on_deep_stratum` puts the held pairs on their kinks
(Gauss-Newton on ``c``), then takes Newton steps on the Lagrange system ``grad f + C' mu = 0``, ``c = 0``
in the null space of ``C = dc/dtheta`` (Levenberg-Marquardt damped), with dense Jacobians and Hessians:
:data:`MAX_PARAMS` and :data:`MAX_JACOBIAN` bound the sizes. It stops, and says why
(:class:`~sospcheck.stratum.StratumStatus`), as the one-hidden-layer iteration does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import hessian, jacfwd

from ..loss_change import decay_change, loss_change, loss_change_noise
from ..losses import Loss
from ..stratum import StratumPoint, StratumStatus, StratumStep, _ball_exit
from .kinks import boundary_thresholds
from .model import DeepNet, deep_forward
from .pieces import Pieces

__all__ = ["converge_on_deep_stratum", "deep_risk_change", "deep_risk_change_and_noise", "check_stratum_size", "MAX_PARAMS", "MAX_JACOBIAN"]

#: most parameters: each Newton step forms the dense p x p Hessian of the Lagrangian (p Hessian-vector
#: products through the m data) and eigendecomposes its reduced part
MAX_PARAMS = 3000
#: most entries of the dense Jacobian of the outputs and held pre-activations, ``(m dy + held) p``
MAX_JACOBIAN = 50_000_000


def check_stratum_size(net: DeepNet, m: int, held: int = 0) -> None:
    """Refuse (``ValueError``) the sizes whose dense derivatives :func:`converge_on_deep_stratum` would not form."""
    p = net.n_params
    if p > MAX_PARAMS or (m * net.dy + held) * p > MAX_JACOBIAN:
        raise ValueError(f"nearby mode for deep networks forms dense Hessians (p x p) and Jacobians ((m dy + held) x "
                         f"p): p = {p}, m dy = {m * net.dy} exceed MAX_PARAMS = {MAX_PARAMS} or MAX_JACOBIAN = "
                         f"{MAX_JACOBIAN:g} entries; check the point without nearby mode")


def deep_output_change(net: DeepNet, new: DeepNet, X: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(out(new) - out(net), out(net), out_size, delta_size)`` propagated layer by layer from the weight
    change (``dN = W' da + dW a + db``, ``da = s dN`` where the sign is kept), so the change is accurate
    relative to itself. ``out_size`` / ``delta_size`` bound ``|out|`` / ``|delta|`` elementwise by the same
    recursion on absolute values (``|a| |W|' + |b|``; an activation change is at most ``s_hi`` times its
    pre-activation's), the sizes whose few eps per layer bound the rounding (:func:`deep_risk_change_and_noise`)."""
    s_hi = net.s_hi
    a, da = np.asarray(X, float), np.zeros_like(X, dtype=float)
    a_size, da_size = np.abs(a), np.zeros_like(da)
    for l, (W, b, W2, b2) in enumerate(zip(net.weights, net.biases, new.weights, new.biases)):
        N = a @ W.T + (0.0 if b is None else b)
        dN = da @ W2.T + a @ (W2 - W).T + (0.0 if b is None else b2 - b)
        N_size = a_size @ np.abs(W).T + (0.0 if b is None else np.abs(b))
        dN_size = da_size @ np.abs(W2).T + a_size @ np.abs(W2 - W).T + (0.0 if b is None else np.abs(b2 - b))
        if l == net.depth:
            return dN, N, N_size, dN_size
        N2 = N + dN
        same = (N > 0) == (N2 > 0)
        da = np.where(same, np.where(N > 0, net.s_plus, net.s_minus) * dN, net.activation(N2) - net.activation(N))
        a = net.activation(N)
        a_size, da_size = s_hi * N_size, s_hi * dN_size
    raise AssertionError("unreachable")


def deep_risk_change_and_noise(net: DeepNet, new: DeepNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float,
                               weight_decay: float) -> tuple[float, float]:
    """``R(new) - R(net)`` below the rounding of ``R`` (DESIGN.md 8.5 with :func:`deep_output_change`), and a
    bound on its rounding error: :func:`~sospcheck.loss_change.loss_change_noise` with the propagated sizes,
    times the number of layers (each adds a few eps of those sizes), plus the decay term's."""
    delta, out, out_size, delta_size = deep_output_change(net, new, X)
    value = loss_change(loss, out, None, Yp, weight, delta=delta)
    noise = (net.depth + 1) * loss_change_noise(loss, out, Yp, weight, out_size, delta_size)
    if weight_decay:
        z = net.vector()
        dv, dn = decay_change(weight_decay, z, new.vector() - z)
        value, noise = value + dv, noise + dn
    return value, noise


def deep_risk_change(net: DeepNet, new: DeepNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float,
                     weight_decay: float) -> float:
    """``R(new) - R(net)`` below the rounding of ``R`` (:func:`deep_risk_change_and_noise`)."""
    return deep_risk_change_and_noise(net, new, X, Yp, loss, weight, weight_decay)[0]


@dataclass
class _Eval:
    """One point of the iteration: the gradient ``g`` of ``f``, the held values ``c`` and their Jacobian
    ``C``, the multipliers ``mu`` (least squares of ``g + C' mu = 0``), the null space ``Qn`` of ``C`` and the
    range part ``(Vr, sig, Ur)`` of its SVD, the projected gradient's size over its scale (``rel``), the held
    values over their kink scale (``rel_c``)."""

    theta: np.ndarray
    r: np.ndarray
    Hl: np.ndarray
    J: np.ndarray
    g: np.ndarray
    c: np.ndarray
    mu: np.ndarray
    Qn: np.ndarray
    range_part: tuple
    gnorm: float
    scale: float
    rel_c: float
    loss: float
    hess: np.ndarray | None = None
    newton: tuple | None = None  # what _newton_step needs that no damping changes, once computed

    @property
    def rel(self) -> float:
        if self.gnorm == 0:
            return 0.0
        return self.gnorm / self.scale if self.scale > 0 else math.inf

    @property
    def merit(self) -> float:
        return max(self.rel, self.rel_c)


class _DeepStratum:
    """The fixed slopes, the held pairs and the derivatives of ``f`` and ``c`` by torch (float64)."""

    def __init__(self, net: DeepNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float, lam: float,
                 held: list[np.ndarray]):
        fwd = deep_forward(net, X)
        self.net, self.X, self.Yp, self.loss, self.weight, self.lam = net, X, Yp, loss, weight, lam
        self.held = [np.asarray(h, bool) | (N == 0) for h, N in zip(held, fwd.N[:-1])]
        self.positive = [N > 0 for N in fwd.N[:-1]]
        self.S = [np.where(h, 0.0, np.where(N > 0, net.s_plus, net.s_minus)) for h, N in zip(self.held, fwd.N)]
        m = X.shape[0]
        self.pieces = Pieces(net, X, np.zeros((m, net.dy)), np.zeros((m, net.dy, net.dy)), lam, self.S)
        t = self.pieces._t
        self.St = [t(s) for s in self.S]
        self.where = [(torch.as_tensor(np.nonzero(h)[0]), torch.as_tensor(np.nonzero(h)[1])) for h in self.held]
        self.n_held = int(sum(h.sum() for h in self.held))
        self.jacobians = self.hessians = 0

    def mask(self) -> np.ndarray:
        """The held pairs as one m x (units) mask, units in layer-major order."""
        return np.concatenate(self.held, axis=1)

    def _outputs(self, theta: torch.Tensor):
        out, pre = self.pieces.run(theta, self.St)
        held = [p[ii, kk] for p, (ii, kk) in zip(pre, self.where)]
        return out.reshape(-1), torch.cat(held) if held else theta.new_zeros(0)

    def pre(self, theta: np.ndarray) -> list[np.ndarray]:
        """The hidden pre-activations with the stratum's slopes."""
        a, out = np.asarray(self.X, float), []
        for l, (W, b) in enumerate(zip(*_layers(self.net, theta))):
            N = a @ W.T + (0.0 if b is None else b)
            if l == self.net.depth:
                return out
            out.append(N)
            a = self.S[l] * N
        return out

    def evaluate(self, theta: np.ndarray, rcond: float) -> _Eval:
        t = self.pieces._t(theta)
        self.jacobians += 1
        J, C = (x.cpu().numpy() for x in jacfwd(self._outputs)(t))
        out, c = (x.cpu().numpy() for x in self._outputs(t))
        out = out.reshape(-1, self.net.dy)
        r = self.weight * np.asarray(self.loss.grad(out, self.Yp), float)
        Hl = self.weight * np.asarray(self.loss.hess(out, self.Yp), float)
        g = J.T @ r.ravel() + self.lam * theta
        Qn, (Vr, sig, Ur), mu = _split(C, g, rcond)
        gp = Qn.T @ g
        # what the terms of g + C' mu add up to without cancellation: its rounding is eps times this
        rho = np.linalg.norm(r, axis=1) + np.sqrt(np.sum(Hl * Hl, axis=(1, 2))) * np.linalg.norm(out, axis=1)
        scale = float(np.linalg.norm(np.abs(J).T @ np.repeat(rho, self.net.dy) + np.abs(C).T @ np.abs(mu)))
        scale += self.lam * float(np.linalg.norm(theta))
        value = self.weight * math.fsum(np.asarray(self.loss.value(out, self.Yp), float).tolist())
        value += 0.5 * self.lam * float(theta @ theta)
        return _Eval(theta, r, Hl, J, g, c, mu, Qn, (Vr, sig, Ur), float(np.linalg.norm(gp)), scale,
                     self.kink_residual(theta, c), value)

    def kink_residual(self, theta: np.ndarray, c: np.ndarray) -> float:
        """``max |N_j| / (|[W_l b_l]_k| max_i |[a_i; 1]|)`` over the held pairs (0 for a unit with zero row)."""
        if not self.n_held:
            return 0.0
        net = self.net.with_vector(theta)
        thr = boundary_thresholds(net, deep_forward(net, self.X), 1.0)
        scale = np.concatenate([np.broadcast_to(t[None, :], h.shape)[h] for t, h in zip(thr, self.held)])
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(scale > 0, np.abs(c) / np.where(scale > 0, scale, 1.0), 0.0)
        return float(np.max(rel))

    def lagrangian_hessian(self, ev: _Eval) -> np.ndarray:
        """``J' H_l J + Hess(r . out + mu . c) + lam I`` at ``ev``: the Hessian of ``f + mu . c`` with ``r``
        frozen at its value (exact: ``Hess f = J' H_l J + sum_i r_i Hess out_i + lam I``)."""
        if ev.hess is None:
            self.hessians += 1
            rt, mt = self.pieces._t(ev.r.ravel()), self.pieces._t(ev.mu)

            def lag(theta):
                out, c = self._outputs(theta)
                return torch.sum(rt * out) + torch.sum(mt * c)

            H2 = hessian(lag)(self.pieces._t(ev.theta)).cpu().numpy()
            dy = self.net.dy
            Jr = ev.J.reshape(-1, dy, ev.J.shape[1])
            GN = np.einsum("icp,icd,idq->pq", Jr, ev.Hl, Jr)
            ev.hess = GN + H2 + self.lam * np.eye(len(ev.theta))
        return ev.hess

    def rescaling(self, theta: np.ndarray) -> np.ndarray:
        """Tangents of the rescaling orbits (row and bias of unit ``(l, k)`` times ``c``, its outgoing column
        over ``c``), one column per hidden unit (DESIGN.md 10.7)."""
        net = self.net.with_vector(theta)
        sl = net.layer_slices()
        cols = []
        for l in range(net.depth):
            for k in range(net.widths[l]):
                v = np.zeros(net.n_params)
                W = np.zeros_like(net.weights[l])
                W[k] = net.weights[l][k]
                v[sl[l][0]] = W.ravel()
                if sl[l][1] is not None:
                    v[sl[l][1].start + k] = net.biases[l][k]
                W2 = np.zeros_like(net.weights[l + 1])
                W2[:, k] = -net.weights[l + 1][:, k]
                v[sl[l + 1][0]] = W2.ravel()
                if np.any(v):
                    cols.append(v)
        return np.column_stack(cols) if cols else np.zeros((net.n_params, 0))


def _layers(net: DeepNet, theta: np.ndarray) -> tuple[tuple, tuple]:
    other = net.with_vector(theta)
    return other.weights, other.biases


def _split(C: np.ndarray, g: np.ndarray, rcond: float):
    """The null space ``Qn`` of ``C`` (singular values above ``rcond`` times the largest count), the range part
    of its SVD, and the least-squares multipliers ``mu = -C'^+ g``."""
    p = C.shape[1]
    if C.shape[0] == 0:
        return np.eye(p), (np.zeros((p, 0)), np.zeros(0), np.zeros((0, 0))), np.zeros(0)
    U, sig, Vt = np.linalg.svd(C, full_matrices=True)
    k = int(np.sum(sig > rcond * sig[0])) if sig.size and sig[0] > 0 else 0
    Vr, Ur, s = Vt[:k].T, U[:, :k], sig[:k]
    mu = -Ur @ ((Vr.T @ g) / s)
    return Vt[k:].T, (Vr, s, Ur), mu


@dataclass
class _Run:
    """What one :func:`converge_on_deep_stratum` call keeps; ``finish`` makes the result."""

    st: _DeepStratum
    theta_user: np.ndarray
    radius: float
    rcond: float
    projection: float = 0.0
    history: list = field(default_factory=list)

    @property
    def znorm(self) -> float:
        return float(np.linalg.norm(self.theta_user))

    def change(self, theta: np.ndarray) -> float:
        st = self.st
        return deep_risk_change(st.net, st.net.with_vector(theta), st.X, st.Yp, st.loss, st.weight, st.lam)

    def record(self, ev: _Eval, step: int, step_norm: float, mu: float, fresh: bool, accepted: bool) -> None:
        self.history.append(StratumStep(step, ev.loss, self.change(ev.theta), ev.gnorm, ev.rel, step_norm, mu, 1.0,
                                        fresh, accepted))

    def finish(self, ev: _Eval, status: StratumStatus, message: str, crossing=None) -> StratumPoint:
        dist = float(np.linalg.norm(ev.theta - self.theta_user))
        znorm = self.znorm
        message += f" [{self.st.jacobians} Jacobian(s), {self.st.hessians} Hessian(s) of the Lagrangian]"
        return StratumPoint(self.st.net.with_vector(ev.theta), status, message, dist,
                            dist / znorm if znorm > 0 else math.inf, self.change(ev.theta),
                            sum(h.accepted for h in self.history[1:]), ev.gnorm, ev.rel, ev.scale, ev.rel_c,
                            self.projection, self.radius, self.st.mask(), "dense", tuple(self.history), crossing)

    def flipped(self, theta: np.ndarray) -> tuple | None:
        """The first off-held pair ``(i, unit)`` whose sign differs from the stratum's at ``theta`` (or that is 0)."""
        offset = 0
        for N, pos, h in zip(self.st.pre(theta), self.st.positive, self.st.held):
            bad = (~h) & (((N > 0) != pos) | (N == 0))
            if np.any(bad):
                i, k = np.argwhere(bad)[0]
                return int(i), int(k) + offset
            offset += N.shape[1]
        return None

    def first_crossing(self, theta: np.ndarray, d: np.ndarray) -> tuple[float, tuple | None]:
        """Along ``theta + t d``, ``t`` in ``[0, 1]``: the step fraction where an off-held pair first changes sign
        (bisection on the true pre-activations, which are nonlinear in ``t``) and that pair."""
        if self.flipped(theta + d) is None:
            return math.inf, None
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            if self.flipped(theta + mid * d) is None:
                lo = mid
            else:
                hi = mid
        return hi, self.flipped(theta + hi * d)


def _newton_step(run: _Run, ev: _Eval, nu: float) -> tuple[np.ndarray, float]:
    """The damped Newton step on the Lagrange system: ``dr = -C^+ c`` back onto ``c = 0``, then in the null space
    ``Qn`` (rescaling orbits deflated) ``-sum_j l_j / (l_j^2 + mu) (v_j . b) v_j``, ``b`` the reduced
    gradient at ``theta + dr``, ``mu = nu max|l| |g_p| / |theta|`` (DESIGN.md 10.11). Only ``mu`` depends on
    ``nu``: the rest is computed once per point (:func:`_newton_parts`), however many steps are rejected."""
    if ev.newton is None:
        ev.newton = _newton_parts(run, ev)
    dr, B, lam_, V, lmax, rhs = ev.newton
    if B is None:
        return dr, 0.0
    mu = nu * lmax * ev.gnorm / max(run.znorm, 1e-300)
    coef = (V.T @ rhs) * (lam_ / (lam_ * lam_ + mu))
    return dr - B @ (V @ coef), mu


def _newton_parts(run: _Run, ev: _Eval) -> tuple:
    """``(dr, B, l, V, max|l|, B' b)`` of :func:`_newton_step` (``B`` None when the null space is empty)."""
    st = run.st
    Q = st.rescaling(ev.theta) if not st.lam else np.zeros((len(ev.theta), 0))
    H = st.lagrangian_hessian(ev)
    Vr, sig, Ur = ev.range_part
    dr = -(Vr @ ((Ur.T @ ev.c) / sig)) if sig.size else np.zeros_like(ev.theta)
    B = ev.Qn
    if Q.shape[1] and B.shape[1]:
        T = B.T @ Q
        u, s, _ = np.linalg.svd(T, full_matrices=True)
        keep = int(np.sum(s > 1e-8 * max(1.0, s[0]))) if s.size else 0
        B = B @ u[:, keep:]
    if B.shape[1] == 0:
        return dr, None, None, None, 0.0, None
    Hr = B.T @ H @ B
    lam_, V = np.linalg.eigh(0.5 * (Hr + Hr.T))
    lmax = float(np.max(np.abs(lam_))) if lam_.size else 0.0
    keep = np.abs(lam_) > run.rcond * lmax
    rhs = B.T @ (ev.g + H @ dr)  # B spans part of null(C): the multiplier term C' mu drops out
    return dr, B, lam_[keep], V[:, keep], lmax, rhs


def _project(run: _Run, ev: _Eval, max_iter: int = 20) -> _Eval:
    """Gauss-Newton on ``c``: ``theta <- theta - C^+ c`` while the held values fall (the constraints are
    polynomial, not linear, beyond the first hidden layer), to rounding."""
    for _ in range(max_iter):
        Vr, sig, Ur = ev.range_part
        if not sig.size or ev.rel_c == 0:
            break
        trial = run.st.evaluate(ev.theta - Vr @ ((Ur.T @ ev.c) / sig), run.rcond)
        if trial.rel_c >= 0.5 * ev.rel_c:
            if trial.rel_c < ev.rel_c:
                ev = trial
            break
        ev = trial
    return ev


def converge_on_deep_stratum(net: DeepNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float,
                             weight_decay: float, held: list[np.ndarray], *, radius: float, gtol: float = 1e-15,
                             floor_tol: float = 1e-12, max_iter: int = 50, rcond: float = 1e-12) -> StratumPoint:
    """Move ``net`` to a nearby point of its stratum where the gradient of the risk, restricted to the held
    pairs' surfaces ``c = 0``, vanishes to rounding (DESIGN.md 10.11).

    The held pairs (``held[l]``, m x n_l, plus every pair exactly at 0) are put on their kinks by
    Gauss-Newton on ``c``; then damped Newton steps on the Lagrange system (:func:`_newton_step`), ``nu``
    divided by 10 after an accepted trial (the larger of the relative projected gradient and the relative
    kink residual fell), multiplied by 10 after a rejected one; the Hessian is fresh at every iterate.
    Stops as :func:`sospcheck.stratum.converge_on_stratum` (``converged``, ``rounding_floor``,
    ``no_progress``, ``max_iterations``, ``left_stratum`` with the pair ``(i, unit)`` that changes sign
    first along the step, ``radius_exceeded`` for ``|theta' - theta| > radius``). Never raises for an
    iteration that fails; :func:`check_stratum_size` first refuses the sizes it would not form.
    """
    st = _DeepStratum(net, X, Yp, loss, float(weight), float(weight_decay), held)
    check_stratum_size(net, X.shape[0], st.n_held)
    theta_user = net.vector()
    run = _Run(st, theta_user, float(radius), rcond)
    ev = _project(run, st.evaluate(theta_user, rcond))
    run.projection = float(np.linalg.norm(ev.theta - theta_user))
    run.record(ev, 0, run.projection, 0.0, False, True)
    pair = run.flipped(ev.theta)
    if pair is not None:
        return run.finish(ev, StratumStatus.LEFT_STRATUM, f"putting the held pairs on their kinks moves unit "
                          f"{pair[1]} across data point {pair[0]}", pair)
    if run.projection > run.radius:
        return run.finish(ev, StratumStatus.RADIUS_EXCEEDED, f"putting the held pairs on their kinks moves the "
                          f"weights by {run.projection:.3g} > radius {run.radius:.3g}")
    return _iterate(run, ev, gtol, floor_tol, max_iter)


def _iterate(run: _Run, cur: _Eval, gtol: float, floor_tol: float, max_iter: int) -> StratumPoint:
    """The damped Newton loop of :func:`converge_on_deep_stratum` from the projected start ``cur``."""
    st = run.st
    nu, slow = 1.0, 0
    for it in range(1, max_iter + 1):
        if cur.merit <= gtol:
            break
        d, mu = _newton_step(run, cur, nu)
        t_cross, pair = run.first_crossing(cur.theta, d)
        t_ball = _ball_exit(cur.theta - run.theta_user, d, run.radius)
        if min(t_cross, t_ball) <= 1.0:
            if t_cross <= t_ball:
                return run.finish(cur, StratumStatus.LEFT_STRATUM, f"step {it} would move unit {pair[1]} across "
                                  f"data point {pair[0]}: no stationary point found on this stratum", pair)
            return run.finish(cur, StratumStatus.RADIUS_EXCEEDED, f"step {it} would leave the ball of radius "
                              f"{run.radius:.3g} around the weights (relative gradient {cur.rel:.2g}): no "
                              "stationary point found within it")
        trial = st.evaluate(cur.theta + d, run.rcond)
        accepted = trial.merit < cur.merit
        run.record(trial, it, float(np.linalg.norm(d)), mu, True, accepted)
        if accepted:
            ratio = trial.merit / cur.merit if cur.merit > 0 else 0.0
            cur, nu = trial, max(1e-8, nu / 10.0)
            slow = slow + 1 if ratio > 0.5 else 0
        else:
            slow, nu = slow + 1, nu * 10.0
        if slow >= 2 and cur.merit > gtol:
            status = StratumStatus.ROUNDING_FLOOR if cur.merit <= floor_tol else StratumStatus.NO_PROGRESS
            return run.finish(cur, status, f"the relative gradient stopped falling at {cur.rel:.2g} (kink residual "
                              f"{cur.rel_c:.2g}; {'<=' if cur.merit <= floor_tol else '>'} floor_tol {floor_tol:.2g})")
    if cur.merit <= gtol:
        return run.finish(cur, StratumStatus.CONVERGED, f"stationary on the stratum: relative gradient {cur.rel:.2g}"
                          f", kink residual {cur.rel_c:.2g} <= {gtol:.2g}")
    return run.finish(cur, StratumStatus.MAX_ITERATIONS, f"{max_iter} iterations without reaching a relative "
                      f"gradient of {gtol:.2g} (now {cur.rel:.2g})")
