"""Escape saddles during training: run the user's optimizer until it stalls, move to the nearby kink
point, run the check, then step along the verified direction (``descent``) or stop with the
certificate (``local_minimum`` / ``sosp``).

Modules, one job each: :mod:`.stall` (when the optimizer has stalled), :mod:`sospcheck.nearby`
(the nearby kink point: zero, merge, snap, polish, refit; shared with the check), :mod:`.step`
(the check there and the step along its direction), :mod:`.loop` (the PyTorch callback
:class:`SaddleEscape` and :func:`train_with_escapes`). All but the loop need no PyTorch; the loop
imports it when used. Every public name is importable from ``sospcheck.escape``.
"""

from ..nearby import Nearby, merge_duplicates, near_zero_neurons, nearby_point, polish, zero_neurons
from .loop import EscapeEvent, EscapePolicy, SaddleEscape, TrainLog, train_with_escapes
from .stall import StallConfig, StallDetector
from .step import EscapeAttempt, NearbyCheck, best_new_neuron, escape_step, nearby_check, neuron_size_bound

__all__ = ["StallConfig", "StallDetector", "Nearby", "NearbyCheck", "EscapeAttempt", "EscapePolicy", "EscapeEvent",
           "near_zero_neurons", "zero_neurons", "merge_duplicates", "polish", "best_new_neuron", "neuron_size_bound",
           "nearby_point", "nearby_check", "escape_step", "SaddleEscape", "TrainLog", "train_with_escapes"]
