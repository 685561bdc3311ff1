"""Tolerances and budgets: every threshold of the check, relative to a natural scale (DESIGN.md sections 6, 7)."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import TypeVar

import numpy as np

__all__ = ["Options", "Tolerances", "Budget"]

_O = TypeVar("_O", bound="Options")


class Options:
    """Base of the frozen records of named numbers (:class:`Tolerances`, :class:`Budget`): one
    validation and one :meth:`from_any` for all of them.

    A field annotated ``int`` is a count (an integral float such as ``1e4`` is accepted), one annotated
    ``float`` a finite real; NumPy scalars are accepted and stored as Python numbers, booleans refused.
    Subclasses (frozen dataclasses) set ``argument`` (the keyword users pass, for messages), ``label``
    (how a field is called in messages) and ``positive`` (``> 0`` instead of ``>= 0``).
    """

    argument = "options"
    label = "option"
    positive = False

    def __post_init__(self):
        for f in fields(self):
            object.__setattr__(self, f.name, self._number(f.name, f.type in ("int", int), getattr(self, f.name)))

    def _number(self, name: str, count: bool, v):
        bound = "> 0" if self.positive else ">= 0"
        expected = (f"a {'positive' if self.positive else 'non-negative'} integer" if count
                    else f"a finite number {bound}")
        problem = ValueError(f"{self.label} `{name}` must be {expected}, got {v!r}".lstrip())
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise problem
        try:
            x = float(v)
        except OverflowError:  # an int beyond float range
            x = math.inf if v > 0 else -math.inf
        if not math.isfinite(x) and not (count and isinstance(v, numbers.Integral)):
            raise problem
        if count:
            if not (isinstance(v, numbers.Integral) or x.is_integer()):
                raise problem
            v = int(v)
        else:
            v = x
        if v < 0 or (self.positive and v == 0):
            raise problem
        return v

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_any(cls: type[_O], value, base: _O | None = None) -> _O:
        """``None`` (``base``, else the defaults), an instance, or a dict of some of the fields (the others
        from ``base``, else the defaults)."""
        base = cls() if base is None else base
        if value is None:
            return base
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            known = [f.name for f in fields(cls)]
            unknown = set(value) - set(known)
            if unknown:
                raise ValueError(f"`{cls.argument}` has unknown key(s) {sorted(map(str, unknown))}; known: {known}")
            return replace(base, **value)
        raise TypeError(f"`{cls.argument}` must be a {cls.__name__}, a dict or None, got {type(value).__name__}")


@dataclass(frozen=True)
class Tolerances(Options):
    """Thresholds that turn "== 0" into a decision; each is relative to the scale named.

    boundary: pair (i, k) is on the kink if ``|N_ik| <= boundary * |Z_k| * max_i |xbar_i|``.
    gradient: a gradient (output layer, or a neuron's min-norm subgradient) is zero if its norm is
        at most ``gradient`` times its natural scale (``|r| |[O 1]|``, resp. ``s_hi |a_k| |Xbar|``).
    a_zero: ``a_ik = w_k . r_i`` is zero if ``|a_ik| <= a_zero * |w_k| * max_i |r_i|``; a neuron's
        output column counts as zero if ``|w_k| <= a_zero * |W2|`` or its whole output contribution
        ``s_hi |w_k| |Z_k| max|xbar| sqrt(m) <= a_zero * (|outputs| + |targets|)`` (then both sides of
        its kinks are searched, as for ``w_k = 0``).
    s_bound: ``s*_i`` sits at a bound if within ``s_bound * |s_plus - s_minus|`` of it.
    eigen: an eigenvalue (or copositivity value) is zero if at most ``eigen * |H|_2`` in size.
    rank: singular values below ``rank`` times the largest count as zero (data span, Assumption 2).
    near_zero: a nonzero neuron is reported as near-zero when its largest possible output
        contribution ``s_hi |w_k| |Z_k| max|xbar|`` is at most ``near_zero`` times the RMS size of
        the outputs plus that of the targets (reporting only; never changes the verdict).
    """

    boundary: float = 1e-9
    gradient: float = 1e-7
    a_zero: float = 1e-9
    s_bound: float = 1e-7
    eigen: float = 1e-9
    rank: float = 1e-10
    near_zero: float = 1e-3

    argument = "tolerances"
    label = "tolerance"

    def scaled(self, factor: float) -> "Tolerances":
        """All decision thresholds times ``factor`` (``rank`` unchanged): the fragility probe."""
        return replace(
            self, boundary=self.boundary * factor, gradient=self.gradient * factor,
            a_zero=self.a_zero * factor, s_bound=self.s_bound * factor, eigen=self.eigen * factor,
        )


@dataclass(frozen=True)
class Budget(Options):
    """Caps on the exponential parts, counted before they start (DESIGN.md section 7).

    max_icqp: most inequality-constrained QPs (``2^K``) to solve.
    max_copositive_subsets: most principal submatrices (``2^L``) to enumerate in one copositivity
        test; a larger test is solved as a mixed-integer program instead.
    milp_time_limit: seconds for one such mixed-integer program.
    max_dense_params: largest reduced parameter count for which ``solver="auto"`` forms the dense
        reduced Hessian; larger problems use Hessian-vector products (Lanczos, CG).
    max_cells: most cells of one degenerate neuron's kink arrangement (first order), and most
        combinations of one critical face per degenerate neuron (second order), counted before
        anything is solved (DESIGN.md section 9); the default fits every neuron with ``M_k <= 12``.
    """

    max_icqp: int = 4096
    max_copositive_subsets: int = 2**14
    milp_time_limit: float = 60.0
    max_dense_params: int = 6000
    max_cells: int = 4096

    argument = "budget"
    label = "budget"
    positive = True
