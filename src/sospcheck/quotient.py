"""What the second-order test quotients out: exactly flat directions (DESIGN.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Quotient"]


@dataclass(frozen=True)
class Quotient:
    """The exactly flat blocks removed before the second-order test.

    ``data_span_dim`` of ``full_dim``: the ``v_k`` coordinates kept (the span of the data).
    ``dead_neurons``: ``u_k, nu_k`` removed. ``zero_output_neurons``: ``nu_k`` removed (``g == 0``).
    ``bias_shift_neurons``: one slice row each. ``inactive_directions``: neuron -> number of ``nu_k``
    directions orthogonal to its active points.
    """

    data_span_dim: int
    full_dim: int
    dead_neurons: list[int] = field(default_factory=list)
    zero_output_neurons: list[int] = field(default_factory=list)
    bias_shift_neurons: list[int] = field(default_factory=list)
    inactive_directions: dict[int, int] = field(default_factory=dict)

    @property
    def nontrivial(self) -> bool:
        """Whether anything at all was quotiented out."""
        return bool(self.dead_neurons or self.zero_output_neurons or self.bias_shift_neurons
                    or self.inactive_directions or self.data_span_dim < self.full_dim)

    def inactive_by_name(self) -> dict[str, int]:
        """``inactive_directions`` with string keys, as JSON writes them."""
        return {str(k): int(n) for k, n in self.inactive_directions.items()}

    def to_dict(self) -> dict:
        return {"data_span_dim": int(self.data_span_dim), "full_dim": int(self.full_dim),
                "dead_neurons": list(self.dead_neurons), "zero_output_neurons": list(self.zero_output_neurons),
                "bias_shift_neurons": list(self.bias_shift_neurons),
                "inactive_directions": self.inactive_by_name()}

    def summary_line(self) -> str:
        inactive = ", ".join(f"{k}: {n}" for k, n in self.inactive_directions.items()) or "none"
        return (f"quotiented: data span {self.data_span_dim}/{self.full_dim} dims, dead neurons "
                f"{self.dead_neurons}, zero-output neurons {self.zero_output_neurons}, "
                f"bias shifts of affine neurons {self.bias_shift_neurons}, inactive directions "
                f"(neuron: dims) {inactive}")
