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
2. neurons pointing the same way are merged into one (the others become zero neurons): small
   initialisation aligns neurons into such groups, whose nearly flat valleys no optimizer resolves;
3. points within ``snap_tol`` of a kink are moved onto it (:func:`sospcheck.snap.snap_to_kinks`);
4. a few Levenberg-Marquardt steps on all weights with those points held on their kinks
   (``polish_iters``): gradient methods converge slowly near the end, the check's tolerances are tight;
5. the output layer, convex once the hidden layer is fixed, is refit by its minimum change.

Each step is monotone or negligible in the loss; the reported ``distance`` says how far it went.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
from scipy.linalg import null_space

from .check import check
from .losses import Loss, get_loss, reduction_weight, risk
from .model import TwoLayerNet, forward
from .result import CheckResult, Verdict
from .snap import refit_output_layer, snap_to_kinks

__all__ = ["StallDetector", "Nearby", "NearbyCheck", "EscapeAttempt", "EscapeEvent", "small_neurons",
           "merge_parallel", "polish", "nearby_point", "nearby_check", "escape_step", "SaddleEscape", "TrainLog",
           "train_with_escapes"]

logger = logging.getLogger("sospcheck.escape")

# losses that are exactly quadratic in the output: the output-layer refit is one least-squares solve
_QUADRATIC = ("squared", "mse")


@dataclass
class StallDetector:
    """Flags a stall: over the last ``window`` updates the loss fell by at most
    ``loss_rtol * |loss| + loss_atol``, and the running average of the gradient (mean over the
    first ``window`` updates, then an exponential average with time constant ``window``) has norm
    at most ``grad_tol``. Averaging keeps an optimizer that zigzags across a kink from looking busy.
    Without gradients (``grad=None``) only the loss test applies.
    """

    window: int = 100
    loss_rtol: float = 1e-4
    loss_atol: float = 0.0
    grad_tol: float = 1e-3
    losses: list = field(default_factory=list, init=False, repr=False)
    _avg: object = field(default=None, init=False, repr=False)
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
        self._avg, self._n = None, 0

    @property
    def grad_norm(self) -> float:
        """Norm of the averaged gradient (inf before any gradient was seen)."""
        if self._avg is None:
            return math.inf
        return float((self._avg * self._avg).sum()) ** 0.5

    def update(self, loss: float, grad=None) -> bool:
        """Record one iteration's loss and (flattened, NumPy or torch) gradient; True on a stall."""
        loss = float(loss)
        self.losses.append(loss)
        if len(self.losses) > self.window + 1:
            del self.losses[0]
        if grad is not None:
            self._n += 1
            rate = 1.0 / min(self._n, self.window)
            self._avg = grad * 1.0 if self._avg is None else self._avg + rate * (grad - self._avg)
        if len(self.losses) <= self.window or not math.isfinite(loss):
            return False
        if not self.losses[0] - loss <= self.loss_rtol * abs(loss) + self.loss_atol:
            return False
        return self._avg is None or self.grad_norm <= self.grad_tol


@dataclass(frozen=True)
class Nearby:
    """Thresholds of the nearby kink point (module docstring).

    zero_tol: a neuron is set to zero when ``s_hi |w_k| |Z_k| max|xbar| <= zero_tol * (rms(outputs)
        + rms(targets))`` (the check's ``near_zero`` rule); 0 disables.
    merge_tol: neurons whose unit rows ``Z_k / |Z_k|`` differ by at most this are merged; 0 merges
        exact duplicates only.
    snap_tol: pairs with ``|N_ik| <= snap_tol |Z_k| max|xbar|`` are put on the kink (as ``check(snap=True)``).
    polish_iters: Levenberg-Marquardt iterations (0 disables); skipped when the Jacobian would have
        more than ``polish_max_size`` entries (``m * dy * parameters``).
    refit_rcond: singular values of the output-layer features below ``refit_rcond * s_max`` count as
        zero in the refit (nearly collinear features must not send ``W2`` far away).
    """

    zero_tol: float = 1e-3
    merge_tol: float = 1e-3
    snap_tol: float = 1e-5
    polish_iters: int = 30
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
                raise ValueError(f"`nearby` has unknown key(s) {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
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


def merge_parallel(net: TwoLayerNet, merge_tol: float) -> tuple[TwoLayerNet, list[list[int]]]:
    """Merge neurons whose rows ``Z_k`` point the same way (unit vectors within ``merge_tol``).

    ``h`` is positively homogeneous, so neurons with ``Z_j = |Z_j| u`` add up to one neuron:
    ``sum_j w_j h(Z_j . xbar) = v h(u . xbar)`` with ``v = sum_j |Z_j| w_j``; it is kept balanced
    (``Z = sqrt|v| u``, ``w = v / sqrt|v|``) in the slot of the group's largest member, and the
    others become zero neurons. Returns the network and the groups (lists of neurons, kept one first).
    """
    Z, W2 = np.array(net.Z), np.array(net.W2)
    zn = np.linalg.norm(Z, axis=1)
    live = np.flatnonzero(zn > 0)
    U = Z[live] / zn[live, None]
    size = zn[live] * np.linalg.norm(W2[:, live], axis=0)
    groups, used = [], np.zeros(live.size, bool)
    for a in np.argsort(-size, kind="stable"):
        if used[a]:
            continue
        members = np.flatnonzero(~used & (np.linalg.norm(U - U[a], axis=1) <= merge_tol))
        used[members] = True
        if members.size > 1:
            members = np.concatenate([[a], members[members != a]])
            groups.append([int(live[j]) for j in members])
    if not groups:
        return net, groups
    for group in groups:
        keep = group[0]
        v = W2[:, group] @ zn[group]
        s = np.sqrt(np.linalg.norm(v))
        direction = Z[keep] / zn[keep]
        Z[group], W2[:, group] = 0.0, 0.0
        if s > 0:
            Z[keep], W2[:, keep] = s * direction, v / s
    return _with_Z(net, Z, W2=W2), groups


def _on_kink(net: TwoLayerNet, X: np.ndarray, tol: float) -> np.ndarray:
    fwd = forward(net, X)
    scale = np.linalg.norm(net.Z, axis=1) * np.max(np.linalg.norm(fwd.Xbar, axis=1))
    return np.abs(fwd.N) <= tol * scale[None, :]


def polish(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float, weight_decay: float,
           on_kink: np.ndarray, iters: int = 30) -> tuple[TwoLayerNet, int]:
    """Levenberg-Marquardt on ``R`` over all weights, with the pairs in ``on_kink`` (m, dh) held
    exactly on their kinks (``dZ_k`` in the null space of those ``xbar_i``).

    Step: ``(J' H J + lam I + mu I) delta = -(J' r + lam z)`` with ``J`` the output Jacobian of the
    current linear piece and ``r``, ``H`` the loss gradients and Hessians; taken only if ``R``
    falls (``mu`` shrinks), else ``mu`` grows. Returns the network and the number of steps taken.
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
                J[:, :, offsets[k]:offsets[k + 1]] = cur.W2[:, k][None, :, None] * (S[:, k, None] * (Xbar @ bases[k]))[:, None, :]
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
            new = risk(cand, X, Yp, loss, weight, weight_decay)
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
    cur, groups = merge_parallel(cur, opt.merge_tol)
    # snap_to_kinks also refits the output layer, by normal equations: keep its hidden layer only
    snapped, _ = snap_to_kinks(cur, X, Yp, loss, weight, weight_decay, opt.snap_tol)
    cur = _refit(_with_Z(cur, snapped.Z), X, Yp, loss, weight, weight_decay, opt.refit_rcond)
    steps = 0
    if opt.polish_iters and X.shape[0] * net.dy * net.n_params <= opt.polish_max_size:
        on_kink = _on_kink(cur, X, opt.snap_tol) & (np.linalg.norm(cur.Z, axis=1) > 0)[None, :]
        cur, steps = polish(cur, X, Yp, loss, weight, weight_decay, on_kink, int(opt.polish_iters))
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


def _setup(net, X, Y, loss, reduction):
    if not isinstance(net, TwoLayerNet):
        raise TypeError(f"`net` must be a sospcheck.TwoLayerNet, got {type(net).__name__}")
    X = np.asarray(X, dtype=np.float64)
    lossobj = get_loss(loss)
    Yp = lossobj.prepare(Y, net.dy)
    return X, Yp, lossobj, reduction_weight(reduction, X.shape[0])


def nearby_check(net: TwoLayerNet, X, Y, loss="squared", reduction: str = "sum", weight_decay: float = 0.0, *,
                 nearby: Nearby | dict | None = None, **check_kwargs) -> NearbyCheck:
    """Move to the nearby kink point (:func:`nearby_point`), then :func:`sospcheck.check` there
    (``check_kwargs``: tolerances, budget, fragility, ...). The verdict and any direction are
    about ``NearbyCheck.net``; ``loss_start`` is the risk at ``net``."""
    if "snap" in check_kwargs:
        raise TypeError("nearby_check() snaps by itself; do not pass `snap`")
    X, Yp, lossobj, weight = _setup(net, X, Y, loss, reduction)
    near, info = nearby_point(net, X, Yp, lossobj, weight, weight_decay, nearby)
    result = check(near, X, Yp, loss=lossobj, reduction=reduction, weight_decay=weight_decay, **check_kwargs)
    start_loss = risk(net, X, Yp, lossobj, weight, weight_decay)
    distance = float(np.linalg.norm(near.as_direction().vector() - net.as_direction().vector()))
    return NearbyCheck(result, near, net, info["zeroed"], info["merged"], info["polish_steps"], start_loss,
                       result.loss_value, distance)


@dataclass(frozen=True)
class EscapeAttempt:
    """One escape attempt. ``new_net`` is ``nearby.net + step * direction`` when the verdict was
    ``descent`` and that point's loss ``loss_after`` is below the starting loss; else None."""

    nearby: NearbyCheck
    new_net: TwoLayerNet | None
    step: float | None
    loss_after: float

    @property
    def verdict(self) -> Verdict:
        return self.nearby.result.verdict


def escape_step(net: TwoLayerNet, X, Y, loss="squared", reduction: str = "sum", weight_decay: float = 0.0, *,
                nearby: Nearby | dict | None = None, max_doublings: int = 30, **check_kwargs) -> EscapeAttempt:
    """:func:`nearby_check`, then on ``descent`` a line search along the certified direction ``d``
    from the nearby point: from the certificate's verified step ``t``, double ``t`` while
    ``R(z_near + t d)`` keeps falling. Accepted only if the result beats the loss at ``net``."""
    near = nearby_check(net, X, Y, loss, reduction, weight_decay, nearby=nearby, **check_kwargs)
    res = near.result
    if res.verdict != Verdict.DESCENT:
        return EscapeAttempt(near, None, None, near.loss_start)
    X, Yp, lossobj, weight = _setup(net, X, Y, loss, reduction)

    def R(t):
        return risk(near.net.perturbed(res.descent.direction, t), X, Yp, lossobj, weight, weight_decay)

    t, f = res.descent.step, res.descent.loss_after
    for _ in range(max_doublings):
        f2 = R(2.0 * t)
        if not f2 < f:
            break
        t, f = 2.0 * t, f2
    if not f < near.loss_start - 1e-12 * abs(near.loss_start):
        return EscapeAttempt(near, None, t, near.loss_start)
    return EscapeAttempt(near, near.net.perturbed(res.descent.direction, t), t, f)


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
        what = f"order-{self.order} {self.test}, step {self.step:.3g}" if self.order else (self.reason or "")
        return (f"iter {self.iteration}: {self.verdict} ({what}); loss {self.loss_before:.6g} -> nearby "
                f"{self.loss_nearby:.6g} -> {self.loss_after:.6g}{'' if self.accepted else ' (weights kept)'}; "
                f"zeroed {self.zeroed}, merged {self.merged}, polish {self.polish_steps}, moved {self.distance:.3g}, {self.seconds * 1e3:.1f} ms")


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
    Every attempt is an :class:`EscapeEvent` in ``events`` and a log line (logger ``sospcheck.escape``).
    """

    def __init__(self, model, X, Y, criterion=None, optimizer=None, *, window: int = 100, loss_rtol: float = 1e-4,
                 loss_atol: float = 0.0, grad_tol: float = 1e-3, nearby: Nearby | dict | None = None,
                 weight_decay: float = 0.0, stop_on: tuple = ("local_minimum", "sosp"), max_escapes: int | None = None,
                 reset_optimizer: bool = True, load_certified: bool = True, negative_slope: float | None = None,
                 check_kwargs: dict | None = None, verbose: bool = False):
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
        self.weight_decay = weight_decay
        self.max_escapes = max_escapes
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
                          nearby=self.nearby, **self.check_kwargs)
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
        d = res.descent
        reason = res.reason
        if res.verdict == Verdict.DESCENT and not accepted:
            reason = "the line search did not beat the loss at the optimizer's weights"
        event = EscapeEvent(self.iteration, res.verdict.value, near.loss_start, near.loss_nearby, loss_after,
                            d.order if d else None, d.test if d else None, att.step, near.distance, list(near.zeroed),
                            list(near.merged), near.polish_steps, accepted, time.perf_counter() - t0, reason)
        self.events.append(event)
        self.detector.reset()
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
