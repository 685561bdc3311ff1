"""Per hidden neuron, the record of what decided it (DESIGN.md sections 3 and 9): the numbers the
first-order step computed, the quotient, and the cells and faces of a degenerate neuron."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .degenerate import OVER_BUDGET
from .first_order import NeuronTest
from .quotient import Quotient
from .result import Decision, NeuronRecord

if TYPE_CHECKING:
    from .check import DegenerateStep

__all__ = ["neuron_records"]


def neuron_records(M_k: np.ndarray, neurons: list[NeuronTest] | None, rays_examined: bool, descent_neuron: int | None,
                   quotient: Quotient | None, degenerate: dict[int, DegenerateStep] | None = None) -> list[NeuronRecord]:
    """Per hidden neuron, its numbers and what decided it (the first that applies: the descent moves it,
    quotiented dead or zero-output, not Clarke stationary, its cells (``degenerate``: neuron ->
    :class:`DegenerateStep`), dependent boundary vectors not examined, no kink, the rays)."""
    if neurons is None:
        return [NeuronRecord(k, int(M)) for k, M in enumerate(M_k)]
    dead = set(quotient.dead_neurons) if quotient is not None else set()
    zero = set(quotient.zero_output_neurons) if quotient is not None else set()
    degenerate = degenerate or {}
    records = []
    for nt in neurons:
        L, K = (nt.n_flat, nt.n_both_flat) if rays_examined else (None, None)
        step = degenerate.get(nt.k)
        n_cells = n_faces = None
        if step is not None:  # no extreme rays: the cells and faces say what L and K would
            L = K = None
            n_cells = step.first.cells.count if step.first.status == OVER_BUDGET else step.first.n_cells
            n_faces = step.faces.n_faces if step.faces is not None else None
        decided = next(d for d, applies in (
            (Decision.DESCENT, nt.k == descent_neuron), (Decision.DEAD, nt.k in dead),
            (Decision.ZERO_OUTPUT, nt.k in zero), (Decision.NOT_STATIONARY, not nt.stationary),
            (Decision.CELL_BUDGET, step is not None and step.first.status == OVER_BUDGET),
            (Decision.CRITICAL_FACES, bool(n_faces)), (Decision.CELLS_ASCEND, n_faces == 0),
            (Decision.CELLS_STATIONARY, step is not None),
            (Decision.ASSUMPTION2, nt.M > 0 and not nt.assumption2), (Decision.DIFFERENTIABLE, nt.M == 0),
            (Decision.STATIONARY, not rays_examined), (Decision.RAYS_ASCEND, L == 0), (Decision.FLAT_RAYS, True),
        ) if applies)
        records.append(NeuronRecord(nt.k, nt.M, decided, L, K, nt.rank, nt.assumption2, nt.residual, nt.scale,
                                    n_cells, n_faces))
    return records
