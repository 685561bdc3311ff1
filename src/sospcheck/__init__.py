"""sospcheck: is this point of a one-hidden-layer ReLU-like network a local minimum, a second-order
stationary point, or not (with a verified descent direction)? See DESIGN.md and the README."""

from .check import check
from .losses import Loss, get_loss
from .model import Direction, TwoLayerNet
from .options import Budget, Tolerances
from .point import Problem
from .result import CheckResult, Decision, DescentCertificate, NeuronRecord, Reason, Stats, Verdict

__all__ = ["check", "TwoLayerNet", "Direction", "Loss", "get_loss", "Tolerances", "Budget",
           "CheckResult", "DescentCertificate", "Stats", "Verdict", "Reason", "Decision", "NeuronRecord", "Problem"]
__version__ = "0.1.0"
