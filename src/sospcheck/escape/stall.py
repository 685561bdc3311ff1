"""Stall detection: when an optimizer has stopped making progress, the moment to try an escape."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["StallConfig", "StallDetector"]


def _validate(obj, integers: tuple = (), numbers: tuple = ()) -> None:
    """Integers must be >= 1, numbers >= 0 (``math.inf`` allowed: it disables a test); errors name the field."""
    for name in integers:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"`{name}` must be an integer >= 1, got {v!r}")
    for name in numbers:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or v < 0:
            raise ValueError(f"`{name}` must be a number >= 0 (math.inf disables the test), got {v!r}")


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
        _validate(self, integers=("window",), numbers=("loss_rtol", "loss_atol", "grad_tol"))

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
class StallConfig:
    """When a training loop counts as stalled (:class:`StallDetector`), and how patient to be after an
    escape attempt that gained nothing.

    window: the number of updates each stall test looks back over.
    loss_rtol, loss_atol: a stall needs the loss to have fallen by at most ``loss_rtol * |loss| +
        loss_atol`` over the last ``window`` updates.
    grad_tol: ... and the mean gradient over the last complete block of ``window`` updates to have
        norm at most ``grad_tol`` (``math.inf`` disables this test).
    min_gain: an attempt whose step lowered the loss by less than ``min_gain`` (relative, from the
        nearby point: what the optimizer loses by circling that point does not count) doubles the
        window, so that an optimizer circling a point that is stationary but for tiny slopes is not
        checked every window; a useful escape restores it.
    max_backoff: the window grows to at most ``max_backoff * window``.
    """

    window: int = 100
    loss_rtol: float = 1e-4
    loss_atol: float = 0.0
    grad_tol: float = 1e-3
    min_gain: float = 1e-3
    max_backoff: int = 32

    def __post_init__(self):
        _validate(self, integers=("window", "max_backoff"), numbers=("loss_rtol", "loss_atol", "grad_tol", "min_gain"))

    def detector(self) -> StallDetector:
        """A fresh :class:`StallDetector` with these thresholds."""
        return StallDetector(self.window, self.loss_rtol, self.loss_atol, self.grad_tol)
