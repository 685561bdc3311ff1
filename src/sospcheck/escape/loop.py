"""The escape loop for PyTorch: a callback that watches training, and a full-batch loop that uses it.

At each stall (:mod:`.stall`) the callback runs one escape attempt (:func:`.step.escape_step`) on
the model's weights, writes the new weights into the model on ``descent``, or stops with the
certificate (``local_minimum`` / ``sosp``). PyTorch is imported when a callback is made.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..check import check
from ..nearby import Nearby, escape_nearby
from ..result import CheckResult, Verdict
from .stall import StallConfig
from .step import escape_step

__all__ = ["EscapePolicy", "EscapeEvent", "SaddleEscape", "TrainLog", "train_with_escapes"]

# the name users know (the old single module's): events are logged here whichever module sends them
logger = logging.getLogger("sospcheck.escape")


@dataclass(frozen=True)
class EscapePolicy:
    """What :class:`SaddleEscape` does at a stall, and when it stops.

    best_neuron: when the certified direction grows a zero neuron, also try the neuron that lowers
        the loss most (:func:`.step.best_new_neuron`).
    loose_gradient: after an order-1 verdict, re-run the check with this gradient tolerance to look
        for an order-2 direction (0 disables; :func:`.step.escape_step`).
    stop_on: verdicts at the nearby point that end training with a certificate (re-checked with
        ``fragility=True``).
    max_escapes: stop checking after this many accepted escapes (None: no limit).
    reset_optimizer: clear the optimizer's state after a jump (stale momenta would undo it).
    load_certified: on a certificate, load the certified nearby point into the model.
    """

    best_neuron: bool = True
    loose_gradient: float = 1e-4
    stop_on: tuple = ("local_minimum", "sosp")
    max_escapes: int | None = None
    reset_optimizer: bool = True
    load_certified: bool = True

    def __post_init__(self):
        bad = set(self.stop_on) - {v.value for v in Verdict}
        if bad:
            raise ValueError(f"`stop_on` must hold verdict names {[v.value for v in Verdict]}, got {sorted(bad)}")
        object.__setattr__(self, "stop_on", tuple(self.stop_on))


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

    On a stall (``stall``: a :class:`StallConfig`) it runs :func:`escape_step` on the model's weights
    (full batch ``X, Y``; the risk is ``criterion(model(X), Y) + weight_decay / 2 |z|^2``, with
    ``weight_decay`` as in SGD's; ``nearby``: the thresholds of the nearby point, passed as given to
    :func:`escape_step`: a dict overrides :data:`~sospcheck.nearby.ESCAPE_NEARBY` for ``z*`` and
    :data:`~sospcheck.nearby.KINK_POINT` for the kink point). On
    ``descent`` it writes the new weights into the model's parameters in place and, by the
    ``policy`` (an :class:`EscapePolicy`), clears the optimizer's state; on a verdict in
    ``policy.stop_on`` it sets ``stopped`` and ``certificate`` (re-checked with ``fragility=True``)
    and loads the certified nearby point into the model. Any other outcome (``inconclusive``, a
    step that does not beat the current loss) is logged and training goes on; after an attempt that
    gained little the stall window grows (``StallConfig.min_gain``, ``max_backoff``).
    ``negative_slope``: the activation's, for a model that applies it functionally (as in
    :func:`sospcheck.torch.from_torch`);
    ``check_kwargs`` go to :func:`sospcheck.check` (``fragility`` is off unless given). Every
    attempt is an :class:`EscapeEvent` in ``events`` and a log line (logger ``sospcheck.escape``),
    also printed with ``verbose``.
    """

    def __init__(self, model, X, Y, criterion=None, optimizer=None, *, stall: StallConfig | None = None,
                 nearby: Nearby | dict | None = None, policy: EscapePolicy | None = None, weight_decay: float = 0.0,
                 negative_slope: float | None = None, check_kwargs: dict | None = None, verbose: bool = False):
        from torch import nn

        from .. import torch as bridge

        self.stall = _config(StallConfig, stall, "stall")
        self.policy = _config(EscapePolicy, policy, "policy")
        escape_nearby(nearby)  # a bad key or value is refused now, not at a stall
        # kept as given: resolved here, None would become ESCAPE_NEARBY (no polish) for the kink point
        # too, and the escapes from plateaus would lose the polished, refit point they start from
        self.nearby = dict(nearby) if isinstance(nearby, dict) else nearby
        self._bridge = bridge
        self.model, self.optimizer = model, optimizer
        self.criterion = nn.MSELoss() if criterion is None else criterion
        self.spec = bridge.torch_loss(self.criterion)
        self.negative_slope = negative_slope
        bridge.from_torch(model, negative_slope=negative_slope)  # refuse a wrong architecture now, not at a stall
        self.X_t, self.Y_t = X, Y
        self.X = bridge.as_numpy(X, "X")
        self.Y = self.spec.targets(Y)
        self.detector = self.stall.detector()
        self.weight_decay, self.verbose = weight_decay, verbose
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
        if self.policy.max_escapes is not None and self.n_escapes >= self.policy.max_escapes:
            return None
        return self.escape()

    __call__ = step

    def escape(self) -> EscapeEvent:
        """Handle a stall now (called by :meth:`step`; callable directly)."""
        t0 = time.perf_counter()
        net = self._bridge.from_torch(self.model, negative_slope=self.negative_slope, check_forward=False)
        att = escape_step(net, self.X, self.Y, self.spec.loss, self.spec.reduction, self.weight_decay,
                          nearby=self.nearby, best_neuron=self.policy.best_neuron,
                          loose_gradient=self.policy.loose_gradient, **self.check_kwargs)
        near, res = att.nearby, att.nearby.result
        self.last_check = res
        accepted, loss_after = False, near.loss_start
        if att.new_net is not None:
            self._bridge.load_into(self.model, att.new_net, negative_slope=self.negative_slope)
            accepted, loss_after = True, att.loss_after
            if self.policy.reset_optimizer and self.optimizer is not None:
                self.optimizer.state.clear()
        elif res.verdict.value in self.policy.stop_on:
            self.stopped = True
            kwargs = {**self.check_kwargs, "fragility": True}
            self.certificate = check(near.net, self.X, self.Y, loss=self.spec.loss, reduction=self.spec.reduction,
                                     weight_decay=self.weight_decay, **kwargs)
            if self.policy.load_certified:
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
        useful = accepted and event.loss_nearby - event.loss_after > self.stall.min_gain * abs(event.loss_nearby)
        self.detector.window = (self.stall.window if useful or self.stopped
                                else min(2 * self.detector.window, self.stall.max_backoff * self.stall.window))
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


def _config(cls, value, name: str):
    if value is None:
        return cls()
    if not isinstance(value, cls):
        raise TypeError(f"`{name}` must be a {cls.__name__} or None, got {type(value).__name__}")
    return value


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
