"""The network ``Y(x) = W2 h(W1 x + b1) + b2`` and its forward pass (DESIGN.md section 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .augmented import AugmentedData, DataOperator
from .device_data import placed

__all__ = ["TwoLayerNet", "Direction", "Forward", "forward", "relu_like", "relu_like_slope", "as_float_array",
           "real_array", "check_size", "dtype_problem", "MAX_ELEMENTS"]

#: Largest number of elements of one array sospcheck reads or forms from its inputs (1 GiB as float64):
#: the weights, ``X``, ``Y``, every array in a params or data file, and the ``(m, dh)`` pre-activations.
#: Sizes are checked before anything is allocated; raise it when the machine has the memory.
MAX_ELEMENTS = 2**27

_REAL_KINDS = "biuf"
_KIND_NAMES = {"c": "complex numbers", "U": "strings", "S": "bytes", "M": "datetimes", "m": "timedeltas",
               "O": "Python objects", "V": "structured records"}


def check_size(shape, name: str, role: str | None = None) -> None:
    """Raise naming ``name`` when an array of ``shape`` (``name`` itself, or the ``role`` array it leads to)
    would exceed :data:`MAX_ELEMENTS` elements."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    if n > MAX_ELEMENTS:
        what = "has shape" if role is None else f"needs {role} of shape"
        raise ValueError(f"`{name}` {what} {shape} ({n:,} elements), over the limit of {MAX_ELEMENTS:,} elements "
                         "per array (sospcheck.model.MAX_ELEMENTS)")


def dtype_problem(dtype: np.dtype) -> str | None:
    """Why an array of ``dtype`` cannot hold weights or data (complex, text, dates, objects), or None."""
    if dtype.kind in _REAL_KINDS:
        return None
    return f"{_KIND_NAMES.get(dtype.kind, 'non-numeric values')} (dtype {dtype})"


def real_array(value, name: str, what: str = "a numeric array of real numbers", copy: bool = True) -> np.ndarray:
    """``value`` as a new float64 array (``copy=False``: the same memory when it is one already), or raise
    naming ``name``.

    Only real numbers (float, int, bool) are accepted: complex values would lose their imaginary part,
    strings and dates would become unrelated numbers. The size is checked before any copy, so a huge
    broadcast view or expanded tensor is refused without being materialised.
    """
    if value is None:
        raise TypeError(f"`{name}` must be {what}, got None")
    shape = getattr(value, "shape", None)
    if shape is not None:
        check_size(shape, name)
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError, RuntimeError) as exc:  # ragged lists, tensors that require grad, ...
        reason = " ".join(str(exc).split()[:24])
        raise TypeError(f"`{name}` must be {what}, got {type(value).__name__} ({reason})") from exc
    problem = dtype_problem(arr.dtype)
    if problem is not None:
        raise TypeError(f"`{name}` must be {what}, got {type(value).__name__} of {problem}")
    check_size(arr.shape, name)
    return arr.astype(np.float64, copy=copy)


def as_float_array(value, name: str, ndim: int | None = None, copy: bool = True) -> np.ndarray:
    """Return ``value`` as a finite float64 array (a copy unless ``copy=False``), or raise naming ``name``."""
    arr = real_array(value, name, copy=copy)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimension(s), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"`{name}` contains {bad} NaN or infinite value(s)")
    return arr


@dataclass(frozen=True, eq=False)
class TwoLayerNet:
    """Weights of a one-hidden-layer network with a ReLU-like activation.

    ``h(t) = s_plus * t`` for ``t > 0`` and ``s_minus * t`` for ``t <= 0``; ReLU is
    ``(1, 0)``, leaky ReLU ``(1, 0.01)``. Shapes: ``W1`` (dh, dx), ``b1`` (dh,),
    ``W2`` (dy, dh), ``b2`` (dy,). ``b1=None`` / ``b2=None`` mean the network has no such
    parameter (``nn.Linear(..., bias=False)``): it is fixed at zero and never perturbed.
    """

    W1: np.ndarray
    b1: np.ndarray | None
    W2: np.ndarray
    b2: np.ndarray | None
    s_plus: float = 1.0
    s_minus: float = 0.0

    def __post_init__(self):
        W1 = as_float_array(self.W1, "W1", 2)
        dh, _ = W1.shape
        W2 = as_float_array(self.W2, "W2", 2)
        if dh == 0 or W1.shape[1] == 0:
            raise ValueError(f"`W1` must be non-empty, got shape {W1.shape}")
        if W2.shape[1] != dh or W2.shape[0] == 0:
            raise ValueError(f"`W2` must have shape (dy, {dh}) to match W1 {W1.shape}, got {W2.shape}")
        b1 = None if self.b1 is None else as_float_array(self.b1, "b1", 1)
        b2 = None if self.b2 is None else as_float_array(self.b2, "b2", 1)
        if b1 is not None and b1.shape != (dh,):
            raise ValueError(f"`b1` must have shape ({dh},) to match W1 {W1.shape}, got {b1.shape}")
        if b2 is not None and b2.shape != (W2.shape[0],):
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
            if arr is not None:
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
    def has_b1(self) -> bool:
        return self.b1 is not None

    @property
    def has_b2(self) -> bool:
        return self.b2 is not None

    @property
    def n_params(self) -> int:
        return self.W1.size + self.W2.size + (self.dh if self.has_b1 else 0) + (self.dy if self.has_b2 else 0)

    @property
    def Z(self) -> np.ndarray:
        """``[W1 b1]`` (or ``W1`` without ``b1``), one row per hidden neuron."""
        return np.hstack([self.W1, self.b1[:, None]]) if self.has_b1 else np.array(self.W1)

    def augment(self, X: np.ndarray) -> np.ndarray | DataOperator:
        """``xbar_i = [x_i; 1]`` as an operator over ``X`` (no copy, :class:`AugmentedData`), or ``X``
        itself when the network has no ``b1``; on the device inside ``device_data.placement``."""
        on_device = placed(X, self.has_b1)
        if on_device is not None:
            return on_device
        if not self.has_b1:
            return np.asarray(X)
        return AugmentedData(np.asarray(X))

    def activation(self, N: np.ndarray) -> np.ndarray:
        return relu_like(N, self.s_plus, self.s_minus)

    def slope(self, N: np.ndarray) -> np.ndarray:
        """``h'(N)`` off the kink; the value at ``N == 0`` is ``s_minus`` and is never used there."""
        return relu_like_slope(N, self.s_plus, self.s_minus)

    def perturbed(self, d: "Direction", t: float = 1.0) -> "TwoLayerNet":
        return TwoLayerNet(
            self.W1 + t * d.W1, None if self.b1 is None else self.b1 + t * d.b1,
            self.W2 + t * d.W2, None if self.b2 is None else self.b2 + t * d.b2,
            self.s_plus, self.s_minus,
        )

    def with_weights(self, **kw) -> "TwoLayerNet":
        args = dict(W1=self.W1, b1=self.b1, W2=self.W2, b2=self.b2, s_plus=self.s_plus, s_minus=self.s_minus)
        args.update(kw)
        return TwoLayerNet(**args)

    def as_direction(self) -> "Direction":
        return Direction(self.W1.copy(), _copy(self.b1), self.W2.copy(), _copy(self.b2))

    def distance(self, other: "TwoLayerNet") -> float:
        """``|z - z'|``, the Euclidean distance between the two weight vectors."""
        return float(np.linalg.norm(self.as_direction().vector() - other.as_direction().vector()))

    def to_dict(self) -> dict:
        return {
            "W1": self.W1.tolist(), "b1": _list(self.b1), "W2": self.W2.tolist(), "b2": _list(self.b2),
            "s_plus": self.s_plus, "s_minus": self.s_minus,
        }


def _copy(a):
    return None if a is None else a.copy()


def _list(a):
    return None if a is None else a.tolist()


def _slope(value, name: str) -> float:
    if isinstance(value, (bool, np.bool_)):  # True is no slope anyone means
        raise TypeError(f"`{name}` must be a number, got {value!r}")
    arr = real_array(value, name, "a real number")
    if arr.ndim != 0:
        raise ValueError(f"`{name}` must be a scalar, got shape {arr.shape}")
    if not math.isfinite(float(arr)):
        raise ValueError(f"`{name}` must be a finite number, got {float(arr)}")
    return float(arr)


@dataclass(frozen=True, eq=False)
class Direction:
    """A perturbation with the shapes of a :class:`TwoLayerNet`'s weights (``None`` for absent biases)."""

    W1: np.ndarray
    b1: np.ndarray | None
    W2: np.ndarray
    b2: np.ndarray | None

    @classmethod
    def zeros_like(cls, net: TwoLayerNet) -> "Direction":
        return cls(np.zeros_like(net.W1), None if net.b1 is None else np.zeros_like(net.b1),
                   np.zeros_like(net.W2), None if net.b2 is None else np.zeros_like(net.b2))

    @classmethod
    def from_blocks(cls, dZ: np.ndarray, dW2: np.ndarray, db2: np.ndarray | None, has_b1: bool = True) -> "Direction":
        """From ``dZ = [dW1 db1]`` (or ``dW1`` when ``has_b1`` is False), ``dW2`` and ``db2``."""
        dZ = np.asarray(dZ, dtype=np.float64)
        dW2 = np.asarray(dW2, dtype=np.float64).copy()
        db2 = None if db2 is None else np.asarray(db2, dtype=np.float64).copy()
        if has_b1:
            return cls(dZ[:, :-1].copy(), dZ[:, -1].copy(), dW2, db2)
        return cls(dZ.copy(), None, dW2, db2)

    @classmethod
    def from_vector(cls, net: TwoLayerNet, v: np.ndarray) -> "Direction":
        """The direction whose :meth:`vector` is ``v`` (``W1, b1, W2, b2`` in order; absent biases ``None``)."""
        parts, i = [], 0
        for ref in (net.W1, net.b1, net.W2, net.b2):
            if ref is None:
                parts.append(None)
                continue
            parts.append(np.array(v[i:i + ref.size], dtype=np.float64).reshape(ref.shape))
            i += ref.size
        return cls(*parts)

    @classmethod
    def hidden(cls, net: TwoLayerNet, dZ: np.ndarray) -> "Direction":
        """Moves only the hidden layer: ``dZ`` (dh x d) in ``Z`` coordinates."""
        zero = cls.zeros_like(net)
        return cls.from_blocks(dZ, zero.W2, zero.b2, net.has_b1)

    @classmethod
    def output(cls, net: TwoLayerNet, dW2: np.ndarray, db2: np.ndarray | None) -> "Direction":
        """Moves only the output layer."""
        zero = cls.zeros_like(net)
        return cls(zero.W1, zero.b1, np.asarray(dW2, float), None if net.b2 is None else np.asarray(db2, float))

    @property
    def Z(self) -> np.ndarray:
        return np.hstack([self.W1, self.b1[:, None]]) if self.b1 is not None else self.W1

    def vector(self) -> np.ndarray:
        parts = [self.W1.ravel(), self.b1, self.W2.ravel(), self.b2]
        return np.concatenate([p for p in parts if p is not None])

    def norm(self) -> float:
        return float(np.linalg.norm(self.vector()))

    def scaled(self, c: float) -> "Direction":
        return Direction(c * self.W1, None if self.b1 is None else c * self.b1, c * self.W2,
                         None if self.b2 is None else c * self.b2)

    def normalized(self) -> "Direction":
        n = self.norm()
        if n == 0:
            raise ValueError("cannot normalise a zero direction")
        return self.scaled(1.0 / n)

    def to_dict(self) -> dict:
        return {"W1": self.W1.tolist(), "b1": _list(self.b1), "W2": self.W2.tolist(), "b2": _list(self.b2)}


@dataclass(frozen=True)
class Forward:
    """Quantities of one forward pass: ``Xbar = [X 1]`` (or ``X``), ``N = Xbar Z'``, ``O = h(N)``, outputs."""

    Xbar: np.ndarray | DataOperator
    N: np.ndarray
    O: np.ndarray
    out: np.ndarray


def relu_like(N: np.ndarray, s_plus: float, s_minus: float) -> np.ndarray:
    """``h(N)``: ``s_plus N`` where ``N > 0``, ``s_minus N`` elsewhere. Rounding is monotone, so with
    ``s_plus >= s_minus`` this is ``max(s_plus N, s_minus N)``, the same floats for finite ``N`` (the ReLU,
    ``s_plus max(N, 0)``, gives +0 where the select gave -0, and 0 at ``N = -inf``): one or two passes
    over ``N`` instead of the five of a select between two products."""
    N = np.asarray(N)
    if s_minus == 0.0:
        out = np.maximum(N, 0.0)
        if s_plus != 1.0:
            out *= s_plus
        return out
    out = np.multiply(N, s_minus)
    (np.maximum if s_plus >= s_minus else np.minimum)(out, N if s_plus == 1.0 else s_plus * N, out=out)
    return out


def relu_like_slope(N: np.ndarray, s_plus: float, s_minus: float) -> np.ndarray:
    """``s_plus`` where ``N > 0``, ``s_minus`` elsewhere (as floats, in ``N``'s memory order, so that a
    transpose of the slopes of a Fortran-ordered ``N`` is contiguous without a copy); for ``s_minus = 0``
    one comparison written straight into the result."""
    N = np.asarray(N)
    if s_minus != 0.0:
        return np.where(N > 0, s_plus, s_minus)
    out = np.empty_like(N, dtype=np.float64)
    np.greater(N, 0, out=out)
    if s_plus != 1.0:
        out *= s_plus
    return out


def forward(net: TwoLayerNet, X: np.ndarray) -> Forward:
    """One pass over the data: pre-activations, activations and outputs."""
    Xbar = net.augment(X)
    N = Xbar @ net.Z.T
    O = net.activation(N)
    out = O @ net.W2.T
    if net.has_b2:
        out = out + net.b2
    return Forward(Xbar, N, O, out)
