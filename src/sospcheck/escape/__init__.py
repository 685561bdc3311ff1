"""Escape saddles during training: run the user's optimizer until it stalls, find the exact stationary
point next to it and check it (the check's nearby mode), then step along the verified direction
(``descent``) or stop with the certificate (``local_minimum`` / ``sosp``).

Modules, one job each: :mod:`.stall` (when the optimizer has stalled), :mod:`sospcheck.nearby_mode`
(the nearby stationary point and its verdict, shared with ``check(..., nearby=True)``; the escape
loop's thresholds are :data:`~sospcheck.nearby.ESCAPE_NEARBY`), :mod:`.step` (the check there and
the step along its direction), :mod:`.loop` (the PyTorch callback
:class:`SaddleEscape` and :func:`train_with_escapes`). All but the loop need no PyTorch; the loop
imports it when used. Every public name is importable from ``sospcheck.escape``.
"""

from ..nearby import ESCAPE_NEARBY, Nearby, merge_duplicates, near_zero_neurons, nearby_point, polish, zero_neurons
from .loop import EscapeEvent, EscapePolicy, SaddleEscape, TrainLog, train_with_escapes
from .stall import StallConfig, StallDetector
from .step import EscapeAttempt, NearbyCheck, best_new_neuron, escape_step, nearby_check, neuron_size_bound

__all__ = ["StallConfig", "StallDetector", "Nearby", "ESCAPE_NEARBY", "NearbyCheck", "EscapeAttempt", "EscapePolicy", "EscapeEvent",
           "near_zero_neurons", "zero_neurons", "merge_duplicates", "polish", "best_new_neuron", "neuron_size_bound",
           "nearby_point", "nearby_check", "escape_step", "SaddleEscape", "TrainLog", "train_with_escapes"]
