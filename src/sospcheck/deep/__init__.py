"""Deep fully connected ReLU-like networks: exact verdicts at kinks beyond one hidden layer (DESIGN.md section 10).

Needs the ``torch`` extra (derivatives by automatic differentiation in float64)::

    from sospcheck.deep import DeepNet, check_deep
    result = check_deep(DeepNet((W1, W2, W3), (b1, b2, b3)), X, Y)
"""

from .check import DeepStats, check_deep
from .model import DeepDirection, DeepNet, deep_forward

__all__ = ["DeepNet", "DeepDirection", "DeepStats", "check_deep", "deep_forward"]
