"""Escape saddles during training: run the user's optimizer until it stalls, move to the nearby kink
point, run the check, then step along the verified direction (``descent``) or stop with the
certificate (``local_minimum`` / ``sosp``).

The NumPy core (:class:`StallDetector`, :func:`nearby_point`, :func:`nearby_check`,
:func:`escape_step`) needs no PyTorch. :class:`SaddleEscape`, a callback for a plain PyTorch loop,
and :func:`train_with_escapes` import it when used.

"The nearby kink point" of weights ``z``: neurons whose whole output contribution is negligible are
set exactly to zero (vanishing initialisation leaves such neurons, and they put every data point on
their kink: the saddles of saddle-to-saddle dynamics), points within ``snap_tol`` of a kink are
moved onto it (:func:`sospcheck.snap.snap_to_kinks`), and the output layer, a convex problem once
the hidden layer is fixed, is refit by its minimum change.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .check import check
from .losses import Loss, get_loss, reduction_weight, risk
from .model import TwoLayerNet, forward
from .result import CheckResult, Verdict
from .snap import refit_output_layer, snap_to_kinks

__all__ = ["StallDetector", "NearbyCheck", "EscapeAttempt", "EscapeEvent", "small_neurons", "nearby_point",
           "nearby_check", "escape_step", "SaddleEscape", "TrainLog", "train_with_escapes"]

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
        if not (isinstance(self.window, int) and self.window >= 1):
            raise ValueError(f"`window` must be an integer >= 1, got {self.window!r}")
        for name in ("loss_rtol", "loss_atol", "grad_tol"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
                raise ValueError(f"`{name}` must be a number >= 0 (inf disables nothing, 0 is strictest), got {v!r}")

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
        plateau = self.losses[0] - loss <= self.loss_rtol * abs(loss) + self.loss_atol
        return plateau and (grad is None and self._avg is None or self.grad_norm <= self.grad_tol)


def small_neurons(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, zero_tol: float) -> list[int]:
    """Nonzero neurons with ``s_hi |w_k| |Z_k| max|xbar| <= zero_tol * (rms(outputs) + rms(targets))``:
    the largest output they can contribute is negligible (the check's ``near_zero`` rule)."""
    fwd = forward(net, X)
    reach = (max(net.s_plus, net.s_minus) * np.linalg.norm(net.W2, axis=0) * np.linalg.norm(net.Z, axis=1)
             * np.max(np.linalg.norm(fwd.Xbar, axis=1)))
    nonzero = (np.linalg.norm(net.Z, axis=1) > 0) | (np.linalg.norm(net.W2, axis=0) > 0)
    scale = np.sqrt(np.mean(fwd.out**2)) + np.sqrt(np.mean(Yp**2))
    return [int(k) for k in np.flatnonzero(nonzero & (reach <= zero_tol * scale))]


def _zeroed(net: TwoLayerNet, ks: list[int]) -> TwoLayerNet:
    W1, W2 = np.array(net.W1), np.array(net.W2)
    W1[ks], W2[:, ks] = 0.0, 0.0
    b1 = None
    if net.b1 is not None:
        b1 = np.array(net.b1)
        b1[ks] = 0.0
    return net.with_weights(W1=W1, b1=b1, W2=W2)


def merge_parallel(net: TwoLayerNet, merge_tol: float) -> tuple[TwoLayerNet, list[list[int]]]:
    """Merge neurons whose rows ``Z_k`` point the same way (unit vectors within ``merge_tol``).

    ``h`` is positively homogeneous, so neurons with ``Z_j = |Z_j| u`` add up to one neuron:
    ``sum_j w_j h(Z_j . xbar) = v h(u . xbar)`` with ``v = sum_j |Z_j| w_j``; it is kept balanced
    (``Z = sqrt|v| u``, ``w = v / sqrt|v|``) in the slot of the group's largest member, and the other
    members become zero neurons. Training from small initialisation aligns neurons into such
    groups; merging them removes nearly flat valleys and frees zero neurons for the check to use.
    Returns the merged network and the groups (each a list of neuron indices, first one kept).
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
    for group in groups:
        keep = group[0]
        v = W2[:, group] @ zn[group]
        s = np.sqrt(np.linalg.norm(v))
        Z[group], W2[:, group] = 0.0, 0.0
        if s > 0:
            Z[keep] = s * U[np.flatnonzero(live == keep)[0]]
            W2[:, keep] = v / s
    if not groups:
        return net, groups
    if net.has_b1:
        return net.with_weights(W1=Z[:, :-1], b1=Z[:, -1], W2=W2), groups
    return net.with_weights(W1=Z, W2=W2), groups


def _refit_quadratic(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float, lam: float,
                     rcond: float = 1e-9) -> TwoLayerNet:
    """Minimum-change output-layer refit for ``l = (c/2)|yhat - y*|^2``: with features ``F = [O 1]``
    and ``E = -grad l / c``, ``dT = argmin (w c / 2)|F dT' - E|^2 + (lam / 2)|T + dT|^2`` (minimum
    norm; singular values below ``rcond * s_max`` count as zero, so nearly duplicate neurons do not
    send ``W2`` far away for a negligible gain). Columns of ``F`` that are exactly zero (zero or
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


def nearby_point(net: TwoLayerNet, X: np.ndarray, Yp: np.ndarray, loss: Loss, weight: float, weight_decay: float = 0.0,
                 zero_tol: float = 1e-3, snap_tol: float = 1e-5, merge_tol: float = 1e-3
                 ) -> tuple[TwoLayerNet, list[int], list[list[int]]]:
    """The nearby kink point of ``net`` (module docstring), the neurons set to zero, and the
    groups of parallel neurons merged (:func:`merge_parallel`; ``merge_tol=0`` merges only exact
    duplicates). ``Yp``: targets already prepared by ``loss.prepare``; ``weight``: the reduction weight."""
    ks = small_neurons(net, X, Yp, zero_tol) if zero_tol > 0 else []
    moved = _zeroed(net, ks) if ks else net
    moved, groups = merge_parallel(moved, merge_tol)
    snapped, _ = snap_to_kinks(moved, X, Yp, loss, weight, weight_decay, snap_tol)
    if loss.name in _QUADRATIC:
        # snap_to_kinks solves the normal equations, which can throw W2 far off for near-duplicate
        # neurons: keep its hidden layer only and refit the output layer by its minimum change
        hidden = moved.with_weights(W1=snapped.W1, b1=snapped.b1)
        return _refit_quadratic(hidden, X, Yp, loss, weight, weight_decay), ks, groups
    return snapped, ks, groups


@dataclass(frozen=True)
class NearbyCheck:
    """The check at the nearby kink point ``net`` (= ``result.net``) of the weights ``start``."""

    result: CheckResult
    net: TwoLayerNet
    start: TwoLayerNet
    zeroed: list
    merged: list
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
                 zero_tol: float = 1e-3, merge_tol: float = 1e-3, snap_tol: float = 1e-5,
                 **check_kwargs) -> NearbyCheck:
    """Move to the nearby kink point, then :func:`sospcheck.check` there (``check_kwargs``: tolerances,
    budget, fragility, ...). The verdict and any direction are about ``NearbyCheck.net``."""
    if "snap" in check_kwargs:
        raise TypeError("nearby_check() snaps by itself; do not pass `snap`")
    X, Yp, lossobj, weight = _setup(net, X, Y, loss, reduction)
    near, ks, groups = nearby_point(net, X, Yp, lossobj, weight, weight_decay, zero_tol, snap_tol, merge_tol)
    result = check(near, X, Yp, loss=lossobj, reduction=reduction, weight_decay=weight_decay, **check_kwargs)
    start_loss = risk(net, X, Yp, lossobj, weight, weight_decay)
    distance = float(np.linalg.norm(near.as_direction().vector() - net.as_direction().vector()))
    return NearbyCheck(result, near, net, ks, groups, start_loss, result.loss_value, distance)


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
                zero_tol: float = 1e-3, merge_tol: float = 1e-3, snap_tol: float = 1e-5, max_doublings: int = 30,
                **check_kwargs) -> EscapeAttempt:
    """:func:`nearby_check`, then on ``descent`` a line search along the certified direction ``d``
    from the nearby point: starting at the certificate's verified step, double ``t`` while
    ``R(z_near + t d)`` keeps falling. Accepted only if the result beats the loss at ``net``."""
    near = nearby_check(net, X, Y, loss, reduction, weight_decay, zero_tol=zero_tol, merge_tol=merge_tol,
                        snap_tol=snap_tol, **check_kwargs)
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
    accepted: bool
    seconds: float
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        what = f"order-{self.order} {self.test}, step {self.step:.3g}" if self.order else (self.reason or "")
        return (f"iter {self.iteration}: {self.verdict} ({what}); loss {self.loss_before:.6g} -> nearby "
                f"{self.loss_nearby:.6g} -> {self.loss_after:.6g}{'' if self.accepted else ' (weights kept)'}; "
                f"zeroed {self.zeroed}, merged {self.merged}, moved {self.distance:.3g}, {self.seconds * 1e3:.1f} ms")


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
                 loss_atol: float = 0.0, grad_tol: float = 1e-3, zero_tol: float = 1e-3, merge_tol: float = 1e-3,
                 snap_tol: float = 1e-5,
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
        self.nearby_options = dict(zero_tol=zero_tol, merge_tol=merge_tol, snap_tol=snap_tol)
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
        if not self.detector.update(float(loss), self._grad()):
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
                          **self.nearby_options, **self.check_kwargs)
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
                            list(near.merged), accepted, time.perf_counter() - t0, reason)
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
        value = float(loss)
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
