"""The network ``Y(x) = W2 h(W1 x + b1) + b2`` and its forward pass (DESIGN.md section 1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TwoLayerNet", "Direction", "Forward", "forward", "as_float_array"]


def as_float_array(value, name: str, ndim: int | None = None) -> np.ndarray:
    """Return ``value`` as a finite float64 array, or raise naming ``name``."""
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"`{name}` must be a numeric array, got {type(value).__name__}") from exc
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimension(s), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"`{name}` contains {bad} NaN or infinite value(s)")
    return arr


@dataclass(frozen=True)
class TwoLayerNet:
    """Weights of a one-hidden-layer network with a ReLU-like activation.

    ``h(t) = s_plus * t`` for ``t > 0`` and ``s_minus * t`` for ``t <= 0``; ReLU is
    ``(1, 0)``, leaky ReLU ``(1, 0.01)``. Shapes: ``W1`` (dh, dx), ``b1`` (dh,),
    ``W2`` (dy, dh), ``b2`` (dy,).
    """

    W1: np.ndarray
    b1: np.ndarray
    W2: np.ndarray
    b2: np.ndarray
    s_plus: float = 1.0
    s_minus: float = 0.0

    def __post_init__(self):
        W1 = as_float_array(self.W1, "W1", 2)
        dh, _ = W1.shape
        b1 = as_float_array(self.b1, "b1", 1)
        W2 = as_float_array(self.W2, "W2", 2)
        b2 = as_float_array(self.b2, "b2", 1)
        if dh == 0 or W1.shape[1] == 0:
            raise ValueError(f"`W1` must be non-empty, got shape {W1.shape}")
        if b1.shape != (dh,):
            raise ValueError(f"`b1` must have shape ({dh},) to match W1 {W1.shape}, got {b1.shape}")
        if W2.shape[1] != dh or W2.shape[0] == 0:
            raise ValueError(f"`W2` must have shape (dy, {dh}) to match W1 {W1.shape}, got {W2.shape}")
        if b2.shape != (W2.shape[0],):
            raise ValueError(f"`b2` must have shape ({W2.shape[0]},) to match W2 {W2.shape}, got {b2.shape}")
        s_plus, s_minus = _slope(self.s_plus, "s_plus"), _slope(self.s_minus, "s_minus")
        if s_plus <= 0:
            raise ValueError(f"`s_plus` must be > 0, got {s_plus}")
        if s_minus < 0:
            raise ValueError(f"`s_minus` must be >= 0, got {s_minus}")
        if s_plus == s_minus:
            raise ValueError(
                f"`s_plus` and `s_minus` must differ (got both {s_plus}): the activation would be linear"
            )
        for name, arr in (("W1", W1), ("b1", b1), ("W2", W2), ("b2", b2)):
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "s_plus", s_plus)
        object.__setattr__(self, "s_minus", s_minus)

    @property
    def dx(self) -> int:
        return self.W1.shape[1]

    @property
    def dh(self) -> int:
        return self.W1.shape[0]

    @property
    def dy(self) -> int:
        return self.W2.shape[0]

    @property
    def n_params(self) -> int:
        return self.W1.size + self.b1.size + self.W2.size + self.b2.size

    @property
    def Z(self) -> np.ndarray:
        """``[W1 b1]``, one row per hidden neuron."""
        return np.hstack([self.W1, self.b1[:, None]])

    def activation(self, N: np.ndarray) -> np.ndarray:
        return np.where(N > 0, self.s_plus * N, self.s_minus * N)

    def slope(self, N: np.ndarray) -> np.ndarray:
        """``h'(N)`` off the kink; the value at ``N == 0`` is ``s_minus`` and is never used there."""
        return np.where(N > 0, self.s_plus, self.s_minus)

    def perturbed(self, d: "Direction", t: float = 1.0) -> "TwoLayerNet":
        return TwoLayerNet(
            self.W1 + t * d.W1, self.b1 + t * d.b1, self.W2 + t * d.W2, self.b2 + t * d.b2,
            self.s_plus, self.s_minus,
        )

    def with_weights(self, **kw) -> "TwoLayerNet":
        args = dict(W1=self.W1, b1=self.b1, W2=self.W2, b2=self.b2, s_plus=self.s_plus, s_minus=self.s_minus)
        args.update(kw)
        return TwoLayerNet(**args)

    def as_direction(self) -> "Direction":
        return Direction(self.W1.copy(), self.b1.copy(), self.W2.copy(), self.b2.copy())

    def to_dict(self) -> dict:
        return {
            "W1": self.W1.tolist(), "b1": self.b1.tolist(), "W2": self.W2.tolist(), "b2": self.b2.tolist(),
            "s_plus": self.s_plus, "s_minus": self.s_minus,
        }


def _slope(value, name: str) -> float:
    arr = as_float_array(value, name)
    if arr.ndim != 0:
        raise ValueError(f"`{name}` must be a scalar, got shape {arr.shape}")
    return float(arr)


@dataclass(frozen=True)
class Direction:
    """A perturbation with the shapes of a :class:`TwoLayerNet`'s weights."""

    W1: np.ndarray
    b1: np.ndarray
    W2: np.ndarray
    b2: np.ndarray

    @classmethod
    def zeros_like(cls, net: TwoLayerNet) -> "Direction":
        return cls(np.zeros_like(net.W1), np.zeros_like(net.b1), np.zeros_like(net.W2), np.zeros_like(net.b2))

    @classmethod
    def from_blocks(cls, dZ: np.ndarray, dW2: np.ndarray, db2: np.ndarray) -> "Direction":
        dZ = np.asarray(dZ, dtype=np.float64)
        return cls(dZ[:, :-1].copy(), dZ[:, -1].copy(), np.asarray(dW2, float).copy(), np.asarray(db2, float).copy())

    @property
    def Z(self) -> np.ndarray:
        return np.hstack([self.W1, self.b1[:, None]])

    def vector(self) -> np.ndarray:
        return np.concatenate([self.W1.ravel(), self.b1, self.W2.ravel(), self.b2])

    def norm(self) -> float:
        return float(np.linalg.norm(self.vector()))

    def scaled(self, c: float) -> "Direction":
        return Direction(c * self.W1, c * self.b1, c * self.W2, c * self.b2)

    def normalized(self) -> "Direction":
        n = self.norm()
        if n == 0:
            raise ValueError("cannot normalise a zero direction")
        return self.scaled(1.0 / n)

    def to_dict(self) -> dict:
        return {"W1": self.W1.tolist(), "b1": self.b1.tolist(), "W2": self.W2.tolist(), "b2": self.b2.tolist()}


@dataclass(frozen=True)
class Forward:
    """Quantities of one forward pass: ``Xbar = [X 1]``, ``N = Xbar Z'``, ``O = h(N)``, outputs."""

    Xbar: np.ndarray
    N: np.ndarray
    O: np.ndarray
    out: np.ndarray


def forward(net: TwoLayerNet, X: np.ndarray) -> Forward:
    """One pass over the data: pre-activations, activations and outputs."""
    Xbar = np.hstack([X, np.ones((X.shape[0], 1))])
    N = Xbar @ net.Z.T
    O = net.activation(N)
    out = O @ net.W2.T + net.b2
    return Forward(Xbar, N, O, out)
