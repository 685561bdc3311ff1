"""Embedded examples for ``sospcheck demo``: where the autograd test is fooled, and a certified minimum at a kink."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .model import TwoLayerNet

__all__ = ["Example", "EXAMPLES"]


class Example(NamedTuple):
    """One embedded example: the point, its data, and the verdict the check must give (``expected``)."""

    title: str
    story: str
    net: TwoLayerNet
    X: np.ndarray
    Y: np.ndarray
    expected: str


EXAMPLES = [
    Example(
        "(a) a kink that fools the autograd test",
        "One ReLU neuron, N = x; the point x = 0 sits on the kink with residual -1 (output below its "
        "target). With h'(0) = 0 the autograd gradient is exactly 0 and the Hessian is PSD, yet raising "
        "the bias switches the neuron on for that point and lowers the loss at first order.",
        TwoLayerNet([[1.0]], [0.0], [[1.0]], [0.0]),
        np.array([[0.0], [-1.0]]),
        np.array([1.0, -1.0]),
        "descent",
    ),
    Example(
        "(b) a certified local minimum at a nondifferentiable point",
        "One ReLU neuron on x = -1, 0, 1, 2 with targets 1, -2, 3, 1. The point x = 0 is on the kink, "
        "its Clarke multiplier s* = 1/2 is interior, so both one-sided slopes are positive (a convex "
        "kink). Autograd reports a nonzero gradient here; sospcheck certifies a strict local minimum "
        "modulo the rescaling symmetry.",
        TwoLayerNet([[1.0]], [0.0], [[1.0]], [0.0]),
        np.array([[-1.0], [0.0], [1.0], [2.0]]),
        np.array([1.0, -2.0, 3.0, 1.0]),
        "local_minimum",
    ),
    Example(
        "(c) a second-order saddle hidden in the kinks",
        "Three ReLU neurons, two outputs, four points; three data-neuron pairs sit on kinks with both "
        "one-sided slopes zero. The autograd gradient is 0 and its Hessian PSD. No first-order descent "
        "exists either, but on the cone where the kinks open up the second-order form is not "
        "copositive: sospcheck returns a second-order descent direction from an ICQP and verifies it.",
        TwoLayerNet([[2.0], [-2.0], [-2.0]], [4.0, -4.0, -2.0], [[0.0, 1.0, 0.0], [-2.0, 0.0, 2.0]], [-1.0, 1.0]),
        np.array([[-2.0], [1.0], [0.0], [-1.0]]),
        np.array([[-1.0, 5.0], [-2.0, -11.0], [1.0, -7.0], [-2.0, -3.0]]),
        "descent",
    ),
]
