"""Margins of thresholded decisions: how far each number was from the tolerance that decided it.

A decision compares a number ``x`` with a threshold ``t`` that the fragility probe scales
(``Tolerances.scaled``, DESIGN.md section 7). Its margin is the ratio ``|x| / t``: with the threshold
scaled by ``f`` the decision flips exactly when the ratio lies between 1 and ``f``, so no ratio in
``[1/F, F]`` means no decision flips for any scaling in ``[1/F, F]``. A number known only to within
``accuracy`` (an iterative solver whose stopping test depends on the tolerance) contributes the point
of its interval ``[|x| - accuracy, |x| + accuracy] / t`` nearest to 1, so the band test sees the
whole interval.

One-sided tests (``x < -t``, ``x <= t``) are recorded only when their outcome depends on ``t``
(``x < 0``, resp. ``x > 0``): the others hold for every positive threshold.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .result import Verdict

__all__ = ["Margins", "margin_ratio", "any_in_band", "FRAGILITY_FACTOR", "FRAGILITY_FACTORS", "fragility_verdicts",
           "rerun_factors"]

FRAGILITY_FACTOR = 10.0


def margin_ratio(x: float, t: float, accuracy: float = 0.0) -> float:
    """``|x| / t``, moved towards 1 within ``accuracy``; 0 or inf where no positive scaling of ``t`` can flip it."""
    lo, hi = max(abs(x) - accuracy, 0.0), abs(x) + accuracy
    if t <= 0 or not math.isfinite(t):
        return 0.0 if hi == 0 else math.inf
    return min(max(1.0, lo / t), hi / t)


def any_in_band(margins: list[tuple[str, float]], factor: float = FRAGILITY_FACTOR) -> bool:
    """Whether some decision may flip when the tolerances are scaled by ``factor`` or ``1 / factor``."""
    return any(1.0 / factor <= r <= factor for _, r in margins)


def _closeness(r: float) -> float:
    """Distance of a ratio from 1 on a log scale (0 and inf are infinitely far)."""
    return abs(math.log(r)) if 0 < r < math.inf else math.inf


class Margins:
    """Collects the margins of decisions while making them; per name only the ratio nearest to 1 is
    kept (a vector test is as fragile as its most marginal entry).

    Each method returns the decision, so that a threshold cannot be tested without recording it.
    """

    def __init__(self):
        self._nearest: dict[str, float] = {}

    def add(self, name: str, x: float, t: float, accuracy: float = 0.0) -> None:
        r = margin_ratio(float(x), float(t), accuracy)
        old = self._nearest.get(name)
        if old is None or _closeness(r) < _closeness(old):
            self._nearest[name] = r

    def extend(self, margins: list[tuple[str, float]]) -> None:
        for name, r in margins:
            old = self._nearest.get(name)
            if old is None or _closeness(r) < _closeness(old):
                self._nearest[name] = r

    def abs_le(self, name: str, x: float, t: float, accuracy: float = 0.0) -> bool:
        """``|x| <= t``."""
        self.add(name, x, t, accuracy)
        return abs(x) <= t

    def below(self, name: str, x: float, t: float, accuracy: float = 0.0) -> bool:
        """``x < -t`` (negative beyond the threshold)."""
        if x < 0 or accuracy > 0:
            self.add(name, x, t, accuracy)
        return x < -t

    def at_most(self, name: str, x: float, t: float, accuracy: float = 0.0) -> bool:
        """``x <= t``."""
        if x > 0 or accuracy > 0:
            self.add(name, x, t, accuracy)
        return x <= t

    def vector_abs_le(self, name: str, x, t: float):
        """Elementwise ``|x| <= t``, recording the entry nearest to the threshold."""
        a = np.abs(np.asarray(x, float)).ravel()
        if a.size:
            with np.errstate(divide="ignore"):
                far = np.abs(np.log(a / t)) if t > 0 else np.zeros_like(a)
            self.add(name, float(a[int(np.argmin(np.where(np.isfinite(far), far, np.inf)))]), t)
        return np.abs(np.asarray(x, float)) <= t

    def items(self) -> list[tuple[str, float]]:
        return list(self._nearest.items())


FRAGILITY_FACTORS = (("tolerances_x10", FRAGILITY_FACTOR), ("tolerances_x0.1", 1.0 / FRAGILITY_FACTOR))


def fragility_verdicts(verdict: Verdict, factors: tuple[float, ...], rerun: Callable[[float], Verdict],
                       notify: Callable[[str, int, int | None], None]) -> dict[str, str]:
    """The verdict with every tolerance x10 and x0.1 (DESIGN.md section 6): ``rerun(factor)`` for the
    ``factors`` whose scaling some decision's margin could flip; for the others every decision, hence
    the verdict, stays as it is, and nothing is re-run."""
    out = {}
    for j, (name, factor) in enumerate(FRAGILITY_FACTORS):
        notify("fragility re-runs", j, len(FRAGILITY_FACTORS))
        out[name] = (rerun(factor) if factor in factors else verdict).value
    notify("fragility re-runs", len(FRAGILITY_FACTORS), len(FRAGILITY_FACTORS))
    return out


def rerun_factors(sided: list[tuple[str, float]], unsided: list[tuple[str, float]]) -> tuple[float, ...]:
    """The tolerance factors (x10, x0.1) under which some decision could flip. A decision ``|x| <= t``
    flips under factor ``f`` exactly when ``|x| / t`` lies between 1 and ``f`` (ends included, with room
    for the rounding of ``f t``). ``sided``: each the ratio nearest to 1 on its side of 1; ``unsided``:
    nearest over both sides (as :class:`~sospcheck.margins.Margins` keeps them), so one in the band
    may hide another on the other side: either factor."""
    def within(lo: float, hi: float, margins: list) -> bool:
        return any(lo * (1 - 1e-9) <= r <= hi * (1 + 1e-9) for _, r in margins)

    either = within(1 / FRAGILITY_FACTOR, FRAGILITY_FACTOR, unsided)
    return tuple(f for _, f in FRAGILITY_FACTORS if either or within(*sorted((1.0, f)), sided))
