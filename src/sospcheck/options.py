"""Tolerances and budgets: every threshold of the check, relative to a natural scale (DESIGN.md sections 6, 7)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import math

__all__ = ["Tolerances", "Budget"]


@dataclass(frozen=True)
class Tolerances:
    """Thresholds that turn "== 0" into a decision; each is relative to the scale named.

    boundary: pair (i, k) is on the kink if ``|N_ik| <= boundary * |Z_k| * max_i |xbar_i|``.
    gradient: a gradient (output layer, or a neuron's min-norm subgradient) is zero if its norm is
        at most ``gradient`` times its natural scale (``|r| |[O 1]|``, resp. ``s_hi |a_k| |Xbar|``).
    a_zero: ``a_ik = w_k . r_i`` is zero if ``|a_ik| <= a_zero * |w_k| * max_i |r_i|``.
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

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"tolerance `{f.name}` must be a finite number >= 0, got {v!r}")

    def scaled(self, factor: float) -> "Tolerances":
        """All decision thresholds times ``factor`` (``rank`` unchanged): the fragility probe."""
        return replace(
            self, boundary=self.boundary * factor, gradient=self.gradient * factor,
            a_zero=self.a_zero * factor, s_bound=self.s_bound * factor, eigen=self.eigen * factor,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_any(cls, value) -> "Tolerances":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"`tolerances` has unknown key(s) {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
            return cls(**value)
        raise TypeError(f"`tolerances` must be a Tolerances, a dict or None, got {type(value).__name__}")


@dataclass(frozen=True)
class Budget:
    """Caps on the exponential parts, counted before they start (DESIGN.md section 7).

    max_icqp: most inequality-constrained QPs (``2^K``) to solve.
    max_copositive_subsets: most principal submatrices (``2^L``) to enumerate in one copositivity
        test; a larger test is solved as a mixed-integer program instead.
    milp_time_limit: seconds for one such mixed-integer program.
    max_dense_params: largest reduced parameter count for which ``solver="auto"`` forms the dense
        reduced Hessian; larger problems use Hessian-vector products (Lanczos, CG).
    """

    max_icqp: int = 4096
    max_copositive_subsets: int = 2**14
    milp_time_limit: float = 60.0
    max_dense_params: int = 6000

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"budget `{f.name}` must be a positive number, got {v!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_any(cls, value) -> "Budget":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"`budget` has unknown key(s) {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
            return cls(**value)
        raise TypeError(f"`budget` must be a Budget, a dict or None, got {type(value).__name__}")
