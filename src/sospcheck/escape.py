"""Escape saddles during training: run the user's optimizer until it stalls, move to the nearby kink
point, run the check, then step along the verified direction (``descent``) or stop with the
certificate (``local_minimum`` / ``sosp``).

The NumPy core (:class:`StallDetector`, :func:`nearby_point`, :func:`nearby_check`,
:func:`escape_step`) needs no PyTorch. :class:`SaddleEscape`, a callback for a plain PyTorch loop,
and :func:`train_with_escapes` import it when used.

"The nearby kink point" of weights ``z`` (:class:`Nearby` holds the thresholds):

1. neurons whose whole output contribution is negligible are set exactly to zero: vanishing
   initialisation leaves such neurons, and a zero neuron puts every data point on its kink (the
   saddles of saddle-to-saddle dynamics, decided exactly by the check);
2. neurons whose outputs on the data are collinear are merged into one (the others become zero
   neurons): small initialisation aligns neurons into such groups, whose nearly flat valleys no
   optimizer resolves;
3. points within ``snap_tol`` of a kink are moved onto it (:func:`sospcheck.snap.snap_to_kinks`);
4. a few Levenberg-Marquardt steps on all weights with those points held on their kinks, within a
   ball around the start (``polish_iters``, ``polish_radius``): gradient methods converge slowly near
   the end, and the check's tolerances are tight;
5. the output layer, convex once the hidden layer is fixed, is refit by its minimum change.

Steps 1 and 2 change the outputs on the data by at most their tolerances, 3 by the snap, and 4
and 5 only lower the loss; ``loss_nearby`` and ``distance`` report what it cost.

The escape step (:func:`escape_step`) line-searches the check's verified direction from the nearby
point. When that direction grows a zero neuron (order 2), the neuron that lowers the loss most is
tried too (:func:`best_new_neuron`); when the check finds only an order-1 direction, it is re-run
with a looser gradient tolerance to look for an order-2 one. Whatever is taken was evaluated on the
true loss and must beat the loss where the optimizer was.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
from scipy.linalg import null_space

from .check import check, validate_inputs
from .losses import Loss, risk
from .model import TwoLayerNet, forward
from .options import Tolerances
from .result import CheckResult, Verdict
from .snap import refit_output_layer, snap_to_kinks

__all__ = ["StallDetector", "Nearby", "NearbyCheck", "EscapeAttempt", "EscapeEvent", "small_neurons",
           "merge_duplicates", "polish", "best_new_neuron", "neuron_size_bound", "nearby_point", "nearby_check",
           "escape_step", "SaddleEscape", "TrainLog", "train_with_escapes"]

logger = logging.getLogger("sospcheck.escape")

# losses that are exactly quadratic in the output: the output-layer refit is one least-squares solve
_QUADRATIC = ("squared", "mse")


@dataclass
class StallDetector:
    """Flags a stall: over the last ``window`` updates the loss fell by at most
    ``loss_rtol * |loss| + loss_atol``, and the mean gradient over the last complete block of
    ``window`` updates has norm at most ``grad_tol``. Averaging keeps an optimizer that zigzags
    across a kink from looking busy. Without gradients (``grad=None``) only the loss test applies.
    """

    window: int = 100
    loss_rtol: float = 1e-4
    loss_atol: float = 0.0
    grad_tol: float = 1e-3
    losses: list = field(default_factory=list, init=False, repr=False)
    _sum: object = field(default=None, init=False, repr=False)
    _mean: object = field(default=None, init=False, repr=False)
    _n: int = field(default=0, init=False, repr=False)

    def __post_init__(self):
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"`window` must be an integer >= 1, got {self.window!r}")
        for name in ("loss_rtol", "loss_atol", "grad_tol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
                raise ValueError(f"`{name}` must be a number >= 0 (math.inf disables the test), got {v!r}")

    def reset(self) -> None:
        self.losses.clear()
        self._sum, self._mean, self._n = None, None, 0

    @property
    def grad_norm(self) -> float:
        """Norm of the mean gradient of the last complete block (inf before one is complete)."""
        if self._mean is None:
            return math.inf
        return float((self._mean * self._mean).sum()) ** 0.5

    def update(self, loss: float, grad=None) -> bool:
        """Record one iteration's loss and (flattened, NumPy or torch) gradient; True on a stall."""
        loss = float(loss)
        self.losses.append(loss)
        if len(self.losses) > self.window + 1:
            del self.losses[0]
        if grad is not None:
            self._sum = grad * 1.0 if self._sum is None else self._sum + grad
            self._n += 1
            if self._n >= self.window:
                self._mean, self._sum, self._n = self._sum / self.window, None, 0
        if len(self.losses) <= self.window or not math.isfinite(loss):
            return False
        if not self.losses[0] - loss <= self.loss_rtol * abs(loss) + self.loss_atol:
            return False
        if self._mean is None and self._sum is None:
            return True  # no gradients given: the loss test alone
        return self.grad_norm <= self.grad_tol


@dataclass(frozen=True)
class Nearby:
    """Thresholds of the nearby kink point (module docstring).

    zero_tol: a neuron is set to zero when ``s_hi |w_k| |Z_k| max|xbar| <= zero_tol * (rms(outputs)
        + rms(targets))`` (the check's ``near_zero`` rule); 0 disables.
    merge_tol: neurons whose output columns on the data are within this angle (its sine) are merged
        (:func:`merge_duplicates`); 0 merges exact duplicates only.
    snap_tol: pairs with ``|N_ik| <= snap_tol |Z_k| max|xbar|`` are put on the kink (as ``check(snap=True)``).
    polish_iters: Levenberg-Marquardt iterations (0 disables); skipped when the Jacobian would have
        more than ``polish_max_size`` entries (``m * dy * parameters``). polish_radius: the polished
        weights stay within ``polish_radius * (1 + |z|)`` of where polishing started.
    refit_rcond: singular values of the output-layer features below ``refit_rcond * s_max`` count as
        zero in the refit (nearly collinear features must not send ``W2`` far away).
    """

    zero_tol: float = 1e-3
    merge_tol: float = 1e-2
    snap_tol: float = 1e-5
    polish_iters: int = 30
    polish_radius: float = 0.1
    polish_max_size: int = 2_000_000
    refit_rcond: float = 1e-9

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"`{f.name}` must be a finite number >= 0, got {v!r}")

    @classmethod
    def from_any(cls, value) -> "Nearby":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in fields(cls)}
            if unknown:
                known = [f.name for f in fields(cls)]
                raise ValueError(f"`nearby` has unknown key(s) {sorted(unknown)}; known: {known}")
            return replace(cls(), **value)
        raise TypeError(f"`nearby` must be a Nearby, a dict or None, got {type(value).__name__}")


def small_neurons(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, zero_tol: float) -> list[int]:
    """Nonzero neurons with ``s_hi |w_k| |Z_k| max|xbar| <= zero_tol * (rms(outputs) + rms(targets))``:
    the largest output they can contribute is negligible."""
    fwd = forward(net, X)
    reach = (max(net.s_plus, net.s_minus) * np.linalg.norm(net.W2, axis=0) * np.linalg.norm(net.Z, axis=1)
             * np.max(np.linalg.norm(fwd.Xbar, axis=1)))
    nonzero = (np.linalg.norm(net.Z, axis=1) > 0) | (np.linalg.norm(net.W2, axis=0) > 0)
    scale = np.sqrt(np.mean(fwd.out**2)) + np.sqrt(np.mean(Yp**2))
    return [int(k) for k in np.flatnonzero(nonzero & (reach <= zero_tol * scale))]


def _with_Z(net: TwoLayerNet, Z: np.ndarray, **kw) -> TwoLayerNet:
    if net.has_b1:
        return net.with_weights(W1=Z[:, :-1], b1=Z[:, -1], **kw)
    return net.with_weights(W1=Z, **kw)


def _zeroed(net: TwoLayerNet, ks: list[int]) -> TwoLayerNet:
    Z, W2 = np.array(net.Z), np.array(net.W2)
    Z[ks], W2[:, ks] = 0.0, 0.0
    return _with_Z(net, Z, W2=W2)


def merge_duplicates(net: TwoLayerNet, X: np.ndarray, merge_tol: float) -> tuple[TwoLayerNet, list[list[int]]]:
    """Merge neurons whose outputs on the data are collinear: ``O_b = rho O_a + e`` with
    ``|e| <= merge_tol |O_b|`` (the sine of the angle between the columns of ``O``).

    Then ``w_a O_a + w_b O_b = (w_a + rho w_b) O_a + w_b e``: neuron ``b`` becomes a zero neuron and
    ``w_a`` absorbs it, which changes the outputs on the data by ``|w_b| |e|`` at most. Training from
    small initialisation aligns neurons into such groups, whose nearly flat valleys (ill-conditioned
    output layers) no optimizer resolves and whose exact refit would move ``W2`` far. Each merged
    neuron is rebalanced (``|w_a| = |Z_a|``, a symmetry). Returns the network and the groups
    (lists of neurons, the kept one first).
    """
    fwd = forward(net, X)
    O, Z, W2 = fwd.O, np.array(net.Z), np.array(net.W2)
    on = np.linalg.norm(O, axis=0)
    live = np.flatnonzero((on > 0) & (np.linalg.norm(W2, axis=0) > 0))
    order = live[np.argsort(-(on[live] * np.linalg.norm(W2[:, live], axis=0)), kind="stable")]
    groups, used = [], set()
    for a in order:
        if a in used:
            continue
        used.add(a)
        group = [int(a)]
        for b in order:
            if b in used:
                continue
            rho = float(O[:, a] @ O[:, b]) / on[a] ** 2
            if np.linalg.norm(O[:, b] - rho * O[:, a]) <= merge_tol * on[b]:
                W2[:, a] += rho * W2[:, b]
                Z[b], W2[:, b] = 0.0, 0.0
                used.add(b)
                group.append(int(b))
        if len(group) > 1:
            groups.append(group)
            zn, wn = np.linalg.norm(Z[a]), np.linalg.norm(W2[:, a])
            if zn > 0 and wn > 0:
                c = np.sqrt(wn / zn)
                Z[a], W2[:, a] = c * Z[a], W2[:, a] / c
    if not groups:
        return net, groups
    return _with_Z(net, Z, W2=W2), groups


def _on_kink(net: TwoLayerNet, X: np.ndarray, tol: float) -> np.ndarray:
    fwd = forward(net, X)
    scale = np.linalg.norm(net.Z, axis=1) * np.max(np.linalg.norm(fwd.Xbar, axis=1))
    return np.abs(fwd.N) <= tol * scale[None, :]


def polish(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float, weight_decay: float,
           on_kink: np.ndarray, iters: int = 30, radius: float = math.inf) -> tuple[TwoLayerNet, int]:
    """Levenberg-Marquardt on ``R`` over all weights, with the pairs in ``on_kink`` (m, dh) held
    exactly on their kinks (``dZ_k`` in the null space of those ``xbar_i``).

    Step: ``(J' H J + lam I + mu I) delta = -(J' r + lam z)`` with ``J`` the output Jacobian of the
    current linear piece and ``r``, ``H`` the loss gradients and Hessians; taken only if ``R``
    falls and the weights stay within ``radius`` of ``net`` (``mu`` shrinks), else ``mu`` grows.
    Returns the network and the number of steps taken.
    """
    Xbar = net.augment(X)
    m, d = Xbar.shape
    dh, dy = net.dh, net.dy
    bases = [null_space(Xbar[on_kink[:, k]]) if on_kink[:, k].any() else np.eye(d) for k in range(dh)]
    sizes = [b.shape[1] for b in bases]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    nf = dh + (1 if net.has_b2 else 0)
    n_hidden = int(offsets[-1])
    n = n_hidden + dy * nf
    value = risk(net, X, Yp, loss, weight, weight_decay)
    z0 = net.as_direction().vector()
    mu, taken = None, 0
    cur = net
    for _ in range(iters):
        fwd = forward(cur, X)
        F = np.hstack([fwd.O, np.ones((m, 1))]) if cur.has_b2 else fwd.O
        G = weight * np.asarray(loss.grad(fwd.out, Yp))
        H = weight * np.asarray(loss.hess(fwd.out, Yp))
        S = cur.slope(fwd.N)
        J = np.zeros((m, dy, n))
        for k in range(dh):
            if sizes[k]:
                # dY_i / d phi_k = w_k (S_ik xbar_i' B_k)
                dt = S[:, k, None] * (Xbar @ bases[k])  # (m, sizes[k])
                J[:, :, offsets[k]:offsets[k + 1]] = cur.W2[:, k][None, :, None] * dt[:, None, :]
        for c in range(dy):
            J[:, c, n_hidden + c * nf:n_hidden + (c + 1) * nf] = F
        T = np.hstack([cur.W2, cur.b2[:, None]]) if cur.has_b2 else np.array(cur.W2)
        theta = np.concatenate([np.concatenate([bases[k].T @ cur.Z[k] for k in range(dh)]) if n_hidden else np.zeros(0),
                                T.ravel()])
        g = np.einsum("ic,icv->v", G, J) + weight_decay * theta
        A = np.einsum("icv,icd,idw->vw", J, H, J)
        if weight_decay:
            A[np.diag_indices(n)] += weight_decay
        if mu is None:
            mu = 1e-6 * max(float(np.max(np.diag(A))), 1e-300)
        improved = False
        while mu < 1e12 * max(float(np.max(np.diag(A))), 1e-300):
            try:
                delta = -np.linalg.solve(A + mu * np.eye(n), g)
            except np.linalg.LinAlgError:
                mu *= 8.0
                continue
            Z = np.array(cur.Z)
            for k in range(dh):
                Z[k] += bases[k] @ delta[offsets[k]:offsets[k + 1]]
            Tn = T + delta[n_hidden:].reshape(dy, nf)
            cand = _with_Z(cur, Z, W2=Tn[:, :dh], b2=Tn[:, dh] if cur.has_b2 else None)
            far = np.linalg.norm(cand.as_direction().vector() - z0) > radius
            new = math.inf if far else risk(cand, X, Yp, loss, weight, weight_decay)
            if new < value:
                improved = value - new > 1e-15 * abs(value)
                cur, value, mu, taken = cand, new, mu / 3.0, taken + 1
                break
            mu *= 8.0
        if not improved:
            break
    return cur, taken


def _refit_quadratic(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float, lam: float,
                     rcond: float) -> TwoLayerNet:
    """Minimum-change output-layer refit for ``l = (c/2)|yhat - y*|^2``: with features ``F = [O 1]``
    and ``E = -grad l / c``, ``dT = argmin (w c / 2)|F dT' - E|^2 + (lam / 2)|T + dT|^2`` (minimum
    norm, singular values below ``rcond * s_max`` dropped). Exactly zero columns of ``F`` (zero or
    dead neurons) keep their weights when ``lam = 0``."""
    fwd = forward(net, X)
    F = np.hstack([fwd.O, np.ones((fwd.O.shape[0], 1))]) if net.has_b2 else fwd.O
    T = np.hstack([net.W2, net.b2[:, None]]) if net.has_b2 else np.array(net.W2)  # (dy, nf)
    c = float(np.asarray(loss.hess(fwd.out, Yp))[0, 0, 0])
    E = -np.asarray(loss.grad(fwd.out, Yp)) / c  # (m, dy)
    keep = np.any(F != 0, axis=0) if lam == 0 else np.ones(F.shape[1], bool)
    A, b = np.sqrt(weight * c) * F[:, keep], np.sqrt(weight * c) * E
    if lam:
        A = np.vstack([A, np.sqrt(lam) * np.eye(A.shape[1])])
        b = np.vstack([b, -np.sqrt(lam) * T[:, keep].T])
    dT = np.zeros_like(T)
    if A.shape[1]:
        dT[:, keep] = np.linalg.lstsq(A, b, rcond=rcond)[0].T
    T = T + dT
    return net.with_weights(W2=T[:, :net.dh], b2=T[:, net.dh] if net.has_b2 else None)


def _refit(net, X, Yp, loss, weight, lam, rcond):
    if loss.name in _QUADRATIC:
        return _refit_quadratic(net, X, Yp, loss, weight, lam, rcond)
    return refit_output_layer(net, X, Yp, loss, weight, lam)[0]


def nearby_point(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float, weight_decay: float = 0.0,
                 nearby: Nearby | dict | None = None) -> tuple[TwoLayerNet, dict]:
    """The nearby kink point of ``net`` (module docstring) and what was done to get there:
    ``zeroed`` and ``merged`` neurons, ``polish_steps``. ``Yp``: targets prepared by ``loss.prepare``;
    ``weight``: the reduction weight."""
    opt = Nearby.from_any(nearby)
    ks = small_neurons(net, X, Yp, opt.zero_tol) if opt.zero_tol > 0 else []
    cur = _zeroed(net, ks) if ks else net
    cur, groups = merge_duplicates(cur, X, opt.merge_tol)
    # snap_to_kinks also refits the output layer, by normal equations: keep its hidden layer only
    snapped, _ = snap_to_kinks(cur, X, Yp, loss, weight, weight_decay, opt.snap_tol)
    cur = _refit(_with_Z(cur, snapped.Z), X, Yp, loss, weight, weight_decay, opt.refit_rcond)
    steps = 0
    if opt.polish_iters and X.shape[0] * net.dy * net.n_params <= opt.polish_max_size:
        on_kink = _on_kink(cur, X, opt.snap_tol) & (np.linalg.norm(cur.Z, axis=1) > 0)[None, :]
        radius = opt.polish_radius * (1.0 + cur.as_direction().norm())
        cur, steps = polish(cur, X, Yp, loss, weight, weight_decay, on_kink, int(opt.polish_iters), radius)
        if steps:
            snapped, _ = snap_to_kinks(cur, X, Yp, loss, weight, weight_decay, opt.snap_tol)
            cur = _refit(_with_Z(cur, snapped.Z), X, Yp, loss, weight, weight_decay, opt.refit_rcond)
    return cur, {"zeroed": ks, "merged": groups, "polish_steps": steps}


@dataclass(frozen=True)
class NearbyCheck:
    """The check at the nearby kink point ``net`` (= ``result.net``) of the weights ``start``."""

    result: CheckResult
    net: TwoLayerNet
    start: TwoLayerNet
    zeroed: list
    merged: list
    polish_steps: int
    loss_start: float
    loss_nearby: float
    distance: float


def _setup(net, X, Y, loss, reduction, weight_decay=0.0):
    """Validated ``X``, prepared ``Y``, the loss and the reduction weight (errors name the argument)."""
    X, Yp, lossobj, weight, _ = validate_inputs(net, X, Y, loss, reduction, weight_decay)
    return X, Yp, lossobj, weight


def nearby_check(net: TwoLayerNet, X, Y, loss="squared", reduction: str = "sum", weight_decay: float = 0.0, *,
                 nearby: Nearby | dict | None = None, **check_kwargs) -> NearbyCheck:
    """Move to the nearby kink point (:func:`nearby_point`), then :func:`sospcheck.check` there
    (``check_kwargs``: tolerances, budget, fragility, ...). The verdict and any direction are
    about ``NearbyCheck.net``; ``loss_start`` is the risk at ``net``."""
    if "snap" in check_kwargs:
        raise TypeError("nearby_check() snaps by itself; do not pass `snap`")
    X, Yp, lossobj, weight = _setup(net, X, Y, loss, reduction, weight_decay)
    near, info = nearby_point(net, X, Yp, lossobj, weight, weight_decay, nearby)
    result = check(near, X, Yp, loss=lossobj, reduction=reduction, weight_decay=weight_decay, **check_kwargs)
    start_loss = risk(net, X, Yp, lossobj, weight, weight_decay)
    distance = float(np.linalg.norm(near.as_direction().vector() - net.as_direction().vector()))
    return NearbyCheck(result, near, net, info["zeroed"], info["merged"], info["polish_steps"], start_loss,
                       result.loss_value, distance)


def neuron_size_bound(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray) -> float:
    """``max_k |w_k| |Z_k|``, or when every neuron is (nearly) zero the size ``(rms(outputs) +
    rms(targets)) / max|xbar|`` that a neuron needs to produce outputs of the targets' scale."""
    fwd = forward(net, X)
    sizes = np.linalg.norm(net.W2, axis=0) * np.linalg.norm(net.Z, axis=1)
    scale = (np.sqrt(np.mean(fwd.out**2)) + np.sqrt(np.mean(Yp**2))) / np.max(np.linalg.norm(fwd.Xbar, axis=1))
    return float(max(np.max(sizes), scale))


def _grow_neuron(net: TwoLayerNet, X, Yp, loss, weight, lam, k, v, u, s_max: float) -> tuple[TwoLayerNet, float]:
    """``Z_k = sqrt(s) v``, ``w_k = sqrt(s) u`` (``v``, ``u`` unit) with the best ``s`` in ``[0, s_max]``:
    the outputs move by ``s u h(Xbar v)``, affine in ``s``, and ``|Z_k|^2 + |w_k|^2 = 2 s``, so ``R`` is
    convex in ``s`` and a bounded scalar search finds its minimum."""
    from scipy.optimize import minimize_scalar

    def make(s):
        Z, W2 = np.array(net.Z), np.array(net.W2)
        Z[k], W2[:, k] = np.sqrt(s) * v, np.sqrt(s) * u
        return _with_Z(net, Z, W2=W2)

    def R(s):
        return risk(make(max(s, 0.0)), X, Yp, loss, weight, lam)

    found = minimize_scalar(R, bounds=(0.0, s_max), method="bounded", options={"xatol": 1e-9 * s_max})
    s_best = min((0.0, float(found.x), s_max), key=R)
    return make(s_best), R(s_best)


def best_new_neuron(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float, k: int,
                    weight_decay: float = 0.0, starts: list | None = None, iters: int = 20, n_random: int = 32,
                    seed: int = 0) -> tuple[TwoLayerNet | None, float]:
    """Grow the zero neuron ``k`` into the one that lowers ``R`` most, no larger than the largest
    neuron (:func:`neuron_size_bound`): ``Z_k = sqrt(s) v``, ``w_k = sqrt(s) u``.

    Candidates ``v`` (unit) come from ascent on the correlation ``|r' h(Xbar v)| / |h(Xbar v)|``
    (``r_i`` the weighted loss gradients) from several starts (``starts``, each ``+- xbar_i``,
    ``n_random`` random rows): with the activation pattern ``s`` of ``v`` fixed, the best ``h =
    diag(s) Xbar v`` is the top singular direction of ``r'`` on ``range(diag(s) Xbar)``; a move is
    kept only if the correlation (with the new pattern) improves. Each candidate, with ``u = -r' h /
    |r' h|``, is grown by an exact search over ``s`` (:func:`_grow_neuron`); the lowest risk wins.
    Returns the network and its risk (``None, inf`` if no candidate activates anything).
    """
    fwd = forward(net, X)
    Xbar = fwd.Xbar
    r = weight * np.asarray(loss.grad(fwd.out, Yp))
    s_max = neuron_size_bound(net, X, Yp)

    def score(v):
        hv = net.activation(Xbar @ v)
        nh = np.linalg.norm(hv)
        return float(np.linalg.norm(r.T @ hv) / nh) if nh > 0 else -np.inf

    rng = np.random.default_rng(seed)
    cands = [np.asarray(v, float) for v in (starts or [])]
    cands += [sgn * x for x in Xbar[:64] for sgn in (1.0, -1.0)]
    cands += list(rng.standard_normal((n_random, Xbar.shape[1])))
    found: dict = {}
    for v in cands:
        if not np.any(v):
            continue
        cur = score(v)
        for _ in range(iters):
            pattern = np.where(Xbar @ v > 0, net.s_plus, net.s_minus)
            U, sv, Vt = np.linalg.svd(pattern[:, None] * Xbar, full_matrices=False)
            rank = int(np.sum(sv > 1e-12 * sv[0])) if sv.size and sv[0] > 0 else 0
            if rank == 0:
                break
            w = np.linalg.svd(r.T @ U[:, :rank], full_matrices=False)[2][0]
            step = Vt[:rank].T @ (w / sv[:rank])
            trial = max((score(sgn * step), sgn) for sgn in (1.0, -1.0))
            if not trial[0] > cur * (1.0 + 1e-12):
                break
            cur, v = trial[0], trial[1] * step
        if cur > 0:
            v = v / np.linalg.norm(v)
            found.setdefault(tuple(np.round(v, 8)), v)  # local optima repeat: grow each once
    best, best_R = None, math.inf
    for v in found.values():
        g = r.T @ net.activation(Xbar @ v)
        u = -g / np.linalg.norm(g)
        grown, R = _grow_neuron(net, X, Yp, loss, weight, weight_decay, k, v, u, s_max)
        if R < best_R:
            best, best_R = grown, R
    return best, best_R


@dataclass(frozen=True)
class EscapeAttempt:
    """One escape attempt. ``new_net`` is where training should resume when the verdict was ``descent``
    and that point's loss ``loss_after`` is below the starting loss; else None. The step taken:
    its ``order`` and ``test`` (from the certificate that proposed it; ``loose`` when that was the
    check with the loosened gradient tolerance), ``direction``: "certificate" (the certificate's
    direction, line-searched) or "best neuron" (:func:`best_new_neuron`), and its length ``step``."""

    nearby: NearbyCheck
    new_net: TwoLayerNet | None
    step: float | None
    loss_after: float
    direction: str | None = None
    order: int | None = None
    test: str | None = None
    loose: bool = False
    loose_result: CheckResult | None = None

    @property
    def verdict(self) -> Verdict:
        return self.nearby.result.verdict


def _zero_neuron_of(d, net: TwoLayerNet) -> int | None:
    """The neuron a zero-output certificate moves (its only nonzero block), if it is a zero neuron."""
    moved = np.flatnonzero((np.linalg.norm(d.Z, axis=1) > 0) | (np.linalg.norm(d.W2, axis=0) > 0))
    if moved.size != 1:
        return None
    k = int(moved[0])
    return k if not np.any(net.Z[k]) and not np.any(net.W2[:, k]) else None


def _steps(res: CheckResult, near: TwoLayerNet, X, Yp, lossobj, weight, lam, best_neuron: bool,
           max_doublings: int) -> list[tuple]:
    """Candidate steps ``(loss, net, direction, step)`` from a descent certificate at ``near``."""
    d = res.descent.direction

    def R(t):
        return risk(near.perturbed(d, t), X, Yp, lossobj, weight, lam)

    t, f = res.descent.step, res.descent.loss_after
    t_cap = max(1.0, near.as_direction().norm())  # no step longer than the weights: keep the optimizer stable
    for _ in range(max_doublings):
        if 2.0 * t > t_cap:
            break
        f2 = R(2.0 * t)
        if not f2 < f:
            break
        t, f = 2.0 * t, f2
    out = [(f, near.perturbed(d, t), "certificate", t)]
    k = _zero_neuron_of(d, near) if best_neuron and res.descent.order == 2 else None
    if k is not None:
        grown, f_grown = best_new_neuron(near, X, Yp, lossobj, weight, k, lam, starts=[d.Z[k]])
        if grown is not None:
            dist = float(np.linalg.norm(grown.as_direction().vector() - near.as_direction().vector()))
            out.append((f_grown, grown, "best neuron", dist))
    return out


def escape_step(net: TwoLayerNet, X, Y, loss="squared", reduction: str = "sum", weight_decay: float = 0.0, *,
                nearby: Nearby | dict | None = None, best_neuron: bool = True, loose_gradient: float = 1e-4,
                max_doublings: int = 30, **check_kwargs) -> EscapeAttempt:
    """:func:`nearby_check`, then on ``descent`` a line search along the certified direction ``d``
    from the nearby point: from the certificate's verified step ``t``, double ``t`` while
    ``R(z_near + t d)`` keeps falling and ``t <= max(1, |z_near|)``. When ``d`` grows a zero neuron
    and ``best_neuron``, that neuron grown by :func:`best_new_neuron` is a candidate too.

    An order-1 verdict at the nearby point often means "stationary but for tiny slopes" (a minimum
    a hair off the kink it was snapped to): the check is then re-run with the gradient tolerance
    raised to ``loose_gradient`` (0 disables), and its order-2 direction, if any, is a candidate as
    well. Every candidate is evaluated on the true risk; the lowest wins, and it is accepted only
    if it beats the loss at ``net``. Tiny neurons that the nearby point set to zero and the step
    left at zero get their weights back (when the loss still beats that at ``net``)."""
    near = nearby_check(net, X, Y, loss, reduction, weight_decay, nearby=nearby, **check_kwargs)
    res = near.result
    if res.verdict != Verdict.DESCENT:
        return EscapeAttempt(near, None, None, near.loss_start)
    X, Yp, lossobj, weight = _setup(net, X, Y, loss, reduction, weight_decay)
    args = (near.net, X, Yp, lossobj, weight, weight_decay, best_neuron, max_doublings)
    cands = [c + (res, False) for c in _steps(res, *args)]
    loose = None
    tol = Tolerances.from_any(check_kwargs.get("tolerances"))
    if res.descent.order == 1 and loose_gradient > tol.gradient:
        kwargs = {**check_kwargs, "tolerances": replace(tol, gradient=loose_gradient), "fragility": False}
        loose = check(near.net, X, Yp, loss=lossobj, reduction=reduction, weight_decay=weight_decay, **kwargs)
        if loose.verdict == Verdict.DESCENT and loose.descent.order == 2:
            cands += [c + (loose, True) for c in _steps(loose, *args)]
    f, new_net, how, t, source, is_loose = min(cands, key=lambda c: c[0])
    order, test = source.descent.order, source.descent.test
    idle = [k for k in near.zeroed if not np.any(new_net.Z[k]) and not np.any(new_net.W2[:, k])]
    if idle:
        # the step did not use the tiny neurons set to zero: give them back, since an optimizer
        # cannot grow an exactly zero neuron (its gradient vanishes) but may be growing a tiny one
        Z, W2 = np.array(new_net.Z), np.array(new_net.W2)
        Z[idle], W2[:, idle] = net.Z[idle], net.W2[:, idle]
        restored = _with_Z(new_net, Z, W2=W2)
        f_restored = risk(restored, X, Yp, lossobj, weight, weight_decay)
        if f_restored < near.loss_start - 1e-12 * abs(near.loss_start):
            new_net, f = restored, f_restored
    if not f < near.loss_start - 1e-12 * abs(near.loss_start):
        return EscapeAttempt(near, None, t, near.loss_start, how, order, test, is_loose, loose)
    return EscapeAttempt(near, new_net, t, f, how, order, test, is_loose, loose)


@dataclass(frozen=True)
class EscapeEvent:
    """One stall handled: where (``iteration``: optimizer steps taken), the verdict at the nearby
    kink point, and the losses at the optimizer's weights (``loss_before``), at the nearby point
    (``loss_nearby``) and where training resumes (``loss_after``; ``loss_before`` if nothing moved).
    ``order``/``test``/``step`` describe the descent direction; ``accepted``: the weights were replaced."""

    iteration: int
    verdict: str
    loss_before: float
    loss_nearby: float
    loss_after: float
    order: int | None
    test: str | None
    direction: str | None
    step: float | None
    distance: float
    zeroed: list
    merged: list
    polish_steps: int
    accepted: bool
    seconds: float
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        what = (f"order-{self.order} {self.test}, {self.direction} step {self.step:.3g}" if self.order
                else (self.reason or ""))
        return (f"iter {self.iteration}: {self.verdict} ({what}); loss {self.loss_before:.6g} -> nearby "
                f"{self.loss_nearby:.6g} -> {self.loss_after:.6g}{'' if self.accepted else ' (weights kept)'}; "
                f"zeroed {self.zeroed}, merged {self.merged}, polish {self.polish_steps}, "
                f"moved {self.distance:.3g}, {self.seconds * 1e3:.1f} ms")


class SaddleEscape:
    """Callback for a plain PyTorch training loop; call it once per iteration after ``optimizer.step()``::

        escaper = SaddleEscape(model, X, Y, criterion, optimizer)
        for it in range(n_iters):
            optimizer.zero_grad(); loss = criterion(model(X), Y); loss.backward(); optimizer.step()
            escaper.step(loss)
            if escaper.stopped:
                break          # escaper.certificate: local_minimum / sosp

    On a stall (:class:`StallDetector` with ``window``, ``loss_rtol``, ``loss_atol``, ``grad_tol``)
    it runs :func:`escape_step` on the model's weights (full batch ``X, Y``; the risk is
    ``criterion(model(X), Y) + weight_decay / 2 |z|^2``, with ``weight_decay`` as in SGD's). On
    ``descent`` it writes the new weights into the model's parameters in place and clears the
    optimizer's state (``reset_optimizer``: stale momenta would undo the jump); on a verdict in
    ``stop_on`` it sets ``stopped`` and ``certificate`` (re-checked with ``fragility=True``) and, with
    ``load_certified``, loads the certified nearby point into the model. Any other outcome
    (``inconclusive``, a step that does not beat the current loss) is logged and training goes on.
    After an attempt whose step lowered the loss by less than ``min_gain`` (relative, from the nearby
    point: what the optimizer loses by circling that point does not count), the stall window
    doubles (up to ``max_backoff`` times ``window``) so that an optimizer circling a point that is
    stationary but for tiny slopes is not checked every window; a useful escape restores it.
    Every attempt is an :class:`EscapeEvent` in ``events`` and a log line (logger ``sospcheck.escape``).
    """

    def __init__(self, model, X, Y, criterion=None, optimizer=None, *, window: int = 100, loss_rtol: float = 1e-4,
                 loss_atol: float = 0.0, grad_tol: float = 1e-3, nearby: Nearby | dict | None = None,
                 weight_decay: float = 0.0, stop_on: tuple = ("local_minimum", "sosp"), max_escapes: int | None = None,
                 best_neuron: bool = True, loose_gradient: float = 1e-4, reset_optimizer: bool = True,
                 load_certified: bool = True, min_gain: float = 1e-3, max_backoff: int = 32,
                 negative_slope: float | None = None, check_kwargs: dict | None = None, verbose: bool = False):
        from torch import nn

        from . import torch as bridge

        self._bridge = bridge
        self.model, self.optimizer = model, optimizer
        self.criterion = nn.MSELoss() if criterion is None else criterion
        self.spec = bridge.torch_loss(self.criterion)
        self.negative_slope = negative_slope
        bridge.from_torch(model, negative_slope=negative_slope)  # refuse a wrong architecture now, not at a stall
        self.X_t, self.Y_t = X, Y
        self.X = bridge.as_numpy(X, "X")
        self.Y = self.spec.targets(Y)
        self.detector = StallDetector(window, loss_rtol, loss_atol, grad_tol)
        bad = set(stop_on) - {v.value for v in Verdict}
        if bad:
            raise ValueError(f"`stop_on` must hold verdict names {[v.value for v in Verdict]}, got {sorted(bad)}")
        self.stop_on = tuple(stop_on)
        self.nearby = Nearby.from_any(nearby)
        self.weight_decay, self.best_neuron, self.loose_gradient = weight_decay, best_neuron, loose_gradient
        self.max_escapes = max_escapes
        self.min_gain, self.max_backoff, self.base_window = min_gain, max_backoff, window
        self.reset_optimizer, self.load_certified, self.verbose = reset_optimizer, load_certified, verbose
        self.check_kwargs = {"fragility": False, **(check_kwargs or {})}
        self.iteration = 0
        self.events: list[EscapeEvent] = []
        self.certificate: CheckResult | None = None
        self.last_check: CheckResult | None = None
        self.stopped = False

    @property
    def n_escapes(self) -> int:
        return sum(e.accepted and e.verdict == Verdict.DESCENT.value for e in self.events)

    def _grad(self):
        import torch

        grads = [p.grad.detach().reshape(-1) for p in self.model.parameters() if p.grad is not None]
        return torch.cat(grads).to(torch.float64) if grads else None

    def step(self, loss=None) -> EscapeEvent | None:
        """Count one optimizer step; ``loss``: this iteration's loss (a tensor or float; computed
        if None). Returns the event when this call handled a stall."""
        self.iteration += 1
        if self.stopped:
            return None
        if loss is None:
            import torch

            with torch.no_grad():
                loss = self.criterion(self.model(self.X_t), self.Y_t)
        value = float(loss.detach()) if hasattr(loss, "detach") else float(loss)
        if not self.detector.update(value, self._grad()):
            return None
        if self.max_escapes is not None and self.n_escapes >= self.max_escapes:
            return None
        return self.escape()

    __call__ = step

    def escape(self) -> EscapeEvent:
        """Handle a stall now (called by :meth:`step`; callable directly)."""
        t0 = time.perf_counter()
        net = self._bridge.from_torch(self.model, negative_slope=self.negative_slope, check_forward=False)
        att = escape_step(net, self.X, self.Y, self.spec.loss, self.spec.reduction, self.weight_decay,
                          nearby=self.nearby, best_neuron=self.best_neuron,
                          loose_gradient=self.loose_gradient, **self.check_kwargs)
        near, res = att.nearby, att.nearby.result
        self.last_check = res
        accepted, loss_after = False, near.loss_start
        if att.new_net is not None:
            self._bridge.load_into(self.model, att.new_net, negative_slope=self.negative_slope)
            accepted, loss_after = True, att.loss_after
            if self.reset_optimizer and self.optimizer is not None:
                self.optimizer.state.clear()
        elif res.verdict.value in self.stop_on:
            self.stopped = True
            kwargs = {**self.check_kwargs, "fragility": True}
            self.certificate = check(near.net, self.X, self.Y, loss=self.spec.loss, reduction=self.spec.reduction,
                                     weight_decay=self.weight_decay, **kwargs)
            if self.load_certified:
                self._bridge.load_into(self.model, near.net, negative_slope=self.negative_slope)
                accepted, loss_after = True, near.loss_nearby
        reason = res.reason
        if res.verdict == Verdict.DESCENT and not accepted:
            reason = "the line search did not beat the loss at the optimizer's weights"
        event = EscapeEvent(self.iteration, res.verdict.value, near.loss_start, near.loss_nearby, loss_after,
                            att.order, (att.test + " (loose)" if att.loose else att.test) if att.test else None,
                            att.direction, att.step, near.distance, list(near.zeroed),
                            list(near.merged), near.polish_steps, accepted, time.perf_counter() - t0, reason)
        self.events.append(event)
        self.detector.reset()
        # a stall that yielded (almost) nothing, e.g. an optimizer zigzagging next to a kink point that
        # is stationary but for tiny slopes: wait longer before the next check
        useful = accepted and event.loss_nearby - event.loss_after > self.min_gain * abs(event.loss_nearby)
        self.detector.window = (self.base_window if useful or self.stopped
                                else min(2 * self.detector.window, self.max_backoff * self.base_window))
        logger.info(event.line())
        if self.verbose:
            print(event.line())
        return event


@dataclass
class TrainLog:
    """Per-iteration loss (at the weights before that iteration's step) and cumulative wall time,
    the escape events, the certificate if training stopped on one, and why training stopped."""

    losses: np.ndarray
    times: np.ndarray
    events: list
    certificate: CheckResult | None
    stop_reason: str

    @property
    def iterations(self) -> int:
        return int(self.losses.size)


def train_with_escapes(model, X, Y, criterion, optimizer, max_iters: int, *, target_loss: float | None = None,
                       escape: bool = True, **escape_options) -> TrainLog:
    """Full-batch training ``optimizer.step()`` on ``criterion(model(X), Y)`` for at most ``max_iters``
    iterations, with a :class:`SaddleEscape` (``escape_options`` go to it) unless ``escape=False``.
    Stops at a certificate, at ``loss <= target_loss``, or after ``max_iters``."""
    if not (isinstance(max_iters, int) and max_iters >= 0):
        raise ValueError(f"`max_iters` must be an integer >= 0, got {max_iters!r}")
    escaper = SaddleEscape(model, X, Y, criterion, optimizer, **escape_options) if escape else None
    losses, times = [], []
    t0 = time.perf_counter()
    reason = "max_iters"
    for _ in range(max_iters):
        optimizer.zero_grad()
        loss = criterion(model(X), Y)
        loss.backward()
        value = float(loss.detach())
        losses.append(value)
        if target_loss is not None and value <= target_loss:
            times.append(time.perf_counter() - t0)
            reason = "target_loss"
            break
        optimizer.step()
        if escaper is not None:
            escaper.step(value)
        times.append(time.perf_counter() - t0)
        if escaper is not None and escaper.stopped:
            reason = "certified"
            break
    return TrainLog(np.array(losses), np.array(times), escaper.events if escaper else [],
                    escaper.certificate if escaper else None, reason)
