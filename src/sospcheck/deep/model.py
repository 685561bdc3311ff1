"""A deep fully connected ReLU-like network, its forward pass and perturbation directions (DESIGN.md section 10).

``N^l = W_l a^{l-1} + b_l``, ``a^l = h(N^l)`` for the ``D >= 1`` hidden layers, ``out = N^{D+1}``; the
parameters are listed in ``model.parameters()`` order of the equivalent ``nn.Sequential``:
``W_1, b_1, W_2, b_2, ...`` (absent biases skipped).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..model import as_float_array, relu_like

__all__ = ["DeepNet", "DeepForward", "DeepDirection", "deep_forward", "deep_from_state_dict"]


@dataclass(frozen=True, eq=False)
class DeepNet:
    """Weights ``W_l`` (``n_l x n_{l-1}``) and biases ``b_l`` (``n_l`` or None) of ``L = len(weights)``
    linear layers with the activation ``h(t) = s_plus t`` (``t > 0``), ``s_minus t`` (``t <= 0``)
    between them."""

    weights: tuple
    biases: tuple
    s_plus: float = 1.0
    s_minus: float = 0.0

    def __post_init__(self):
        if len(self.weights) < 2:
            raise ValueError(f"`weights` must hold at least two layers, got {len(self.weights)}")
        if len(self.biases) != len(self.weights):
            raise ValueError(f"`biases` must have one entry (array or None) per layer: {len(self.weights)}, "
                             f"got {len(self.biases)}")
        Ws, bs = [], []
        for l, (W, b) in enumerate(zip(self.weights, self.biases), start=1):
            W = as_float_array(W, f"W{l}", 2)
            if W.size == 0:
                raise ValueError(f"`W{l}` must be non-empty, got shape {W.shape}")
            if Ws and W.shape[1] != Ws[-1].shape[0]:
                raise ValueError(f"`W{l}` has {W.shape[1]} input column(s) but layer {l - 1} has "
                                 f"{Ws[-1].shape[0]} unit(s)")
            if b is not None:
                b = as_float_array(b, f"b{l}", 1)
                if b.shape != (W.shape[0],):
                    raise ValueError(f"`b{l}` must have shape ({W.shape[0]},) to match W{l}, got {b.shape}")
                b.setflags(write=False)
            W.setflags(write=False)
            Ws.append(W)
            bs.append(b)
        s_plus, s_minus = float(self.s_plus), float(self.s_minus)
        if not (math.isfinite(s_plus) and math.isfinite(s_minus)) or s_plus <= 0 or s_minus < 0 or s_plus == s_minus:
            raise ValueError(f"activation slopes must satisfy s_plus > 0, s_minus >= 0, s_plus != s_minus; got "
                             f"({self.s_plus}, {self.s_minus})")
        object.__setattr__(self, "weights", tuple(Ws))
        object.__setattr__(self, "biases", tuple(bs))
        object.__setattr__(self, "s_plus", s_plus)
        object.__setattr__(self, "s_minus", s_minus)

    @property
    def depth(self) -> int:
        """Number of hidden layers ``D``."""
        return len(self.weights) - 1

    @property
    def widths(self) -> list[int]:
        """Hidden widths ``n_1..n_D``."""
        return [W.shape[0] for W in self.weights[:-1]]

    @property
    def dx(self) -> int:
        return self.weights[0].shape[1]

    @property
    def dy(self) -> int:
        return self.weights[-1].shape[0]

    @property
    def s_lo(self) -> float:
        return min(self.s_plus, self.s_minus)

    @property
    def s_hi(self) -> float:
        return max(self.s_plus, self.s_minus)

    def params(self) -> list[np.ndarray]:
        """The parameter arrays in ``model.parameters()`` order."""
        out = []
        for W, b in zip(self.weights, self.biases):
            out.append(W)
            if b is not None:
                out.append(b)
        return out

    @property
    def shapes(self) -> list[tuple]:
        return [a.shape for a in self.params()]

    @property
    def n_params(self) -> int:
        return int(sum(a.size for a in self.params()))

    def vector(self) -> np.ndarray:
        return np.concatenate([a.ravel() for a in self.params()])

    def with_vector(self, v: np.ndarray) -> "DeepNet":
        """The network with all parameters replaced by the flat vector ``v``."""
        arrays = unflatten(np.asarray(v, float), self.shapes)
        it = iter(arrays)
        Ws, bs = [], []
        for b in self.biases:
            Ws.append(next(it))
            bs.append(None if b is None else next(it))
        return DeepNet(tuple(Ws), tuple(bs), self.s_plus, self.s_minus)

    def perturbed(self, d: "DeepDirection", t: float = 1.0) -> "DeepNet":
        """``theta + d.displacement(t)``."""
        return self.with_vector(self.vector() + d.displacement(t))

    def layer_slices(self) -> list[tuple[slice, slice | None]]:
        """Per layer, the slices of ``W_l`` and ``b_l`` (or None) in the flat parameter vector."""
        out, pos = [], 0
        for W, b in zip(self.weights, self.biases):
            sw = slice(pos, pos + W.size)
            pos += W.size
            sb = None
            if b is not None:
                sb = slice(pos, pos + b.size)
                pos += b.size
            out.append((sw, sb))
        return out

    def activation(self, N: np.ndarray) -> np.ndarray:
        return relu_like(N, self.s_plus, self.s_minus)

    def state_dict(self) -> dict:
        """The arrays under the keys of the equivalent ``nn.Sequential``'s state_dict (``0.weight``, ``0.bias``,
        ``2.weight``, ...; absent biases left out), which :func:`deep_from_state_dict` reads back."""
        out = {}
        for l, (W, b) in enumerate(zip(self.weights, self.biases)):
            out[f"{2 * l}.weight"] = W
            if b is not None:
                out[f"{2 * l}.bias"] = b
        return out

    def to_dict(self) -> dict:
        return {"weights": [W.tolist() for W in self.weights],
                "biases": [None if b is None else b.tolist() for b in self.biases],
                "s_plus": self.s_plus, "s_minus": self.s_minus}


def unflatten(v: np.ndarray, shapes: list[tuple]) -> list[np.ndarray]:
    out, pos = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(v[pos:pos + n].reshape(s).copy())
        pos += n
    return out


@dataclass(frozen=True)
class DeepForward:
    """One pass: the inputs of each layer ``A[l]`` (``A[0] = X``), the pre-activations ``N[l]`` of each
    layer (``N[-1]`` the outputs)."""

    A: list
    N: list

    @property
    def out(self) -> np.ndarray:
        return self.N[-1]


def deep_forward(net: DeepNet, X: np.ndarray) -> DeepForward:
    A, N = [np.asarray(X, float)], []
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        Nl = A[-1] @ W.T
        if b is not None:
            Nl = Nl + b
        N.append(Nl)
        if l < net.depth:
            A.append(net.activation(Nl))
    return DeepForward(A, N)


@dataclass(frozen=True, eq=False)
class DeepDirection:
    """A perturbation of a :class:`DeepNet`: the flat first-order part ``eta`` and, for a curve, the
    second-order part ``zeta``: the point at step ``t`` is ``theta + t eta + t^2/2 zeta`` (DESIGN.md 10.6).
    ``shapes``: the parameter shapes, in ``model.parameters()`` order."""

    eta: np.ndarray
    shapes: tuple
    zeta: np.ndarray | None = None

    def displacement(self, t: float) -> np.ndarray:
        d = t * self.eta
        return d if self.zeta is None else d + 0.5 * t * t * self.zeta

    def vector(self) -> np.ndarray:
        return self.eta

    def norm(self) -> float:
        return float(np.linalg.norm(self.eta))

    def scaled(self, c: float) -> "DeepDirection":
        """``eta -> c eta`` with ``zeta -> c^2 zeta``: the same curve, reparametrised."""
        return DeepDirection(c * self.eta, self.shapes, None if self.zeta is None else c * c * self.zeta)

    def normalized(self) -> "DeepDirection":
        n = self.norm()
        if n == 0:
            raise ValueError("cannot normalise a zero direction")
        return self.scaled(1.0 / n)

    def arrays(self, t: float | None = None) -> list[np.ndarray]:
        """``eta`` (or the displacement at step ``t``) as arrays in ``model.parameters()`` order."""
        return self.arrays_of(self.eta if t is None else self.displacement(t))

    def arrays_of(self, v: np.ndarray) -> list[np.ndarray]:
        """A flat vector as arrays in ``model.parameters()`` order."""
        return unflatten(v, list(self.shapes))

    def tensors(self, t: float | None = None, dtype=None, device=None) -> list:
        """As :meth:`arrays`, torch tensors (float64 unless ``dtype``): ``p.add_(d)`` for each parameter
        ``p`` of the model moves it by the displacement."""
        import torch

        return [torch.as_tensor(a, dtype=dtype or torch.float64, device=device) for a in self.arrays(t)]

    def to_dict(self) -> dict:
        return {"parameters": [a.tolist() for a in self.arrays()],
                "zeta": None if self.zeta is None else [a.tolist() for a in self.arrays_of(self.zeta)]}


def deep_from_state_dict(tensors: dict, negative_slope: float = 0.0, where: str = "state_dict") -> DeepNet:
    """A :class:`DeepNet` from ``<layer>.weight`` / ``<layer>.bias`` arrays: layers in the natural order of their
    names (``0, 2, 4`` or ``fc1, fc2, fc3``), checked to chain (each weight's input width is the previous
    output width); a layer without ``bias`` has none."""
    weights = {k[: -len(".weight")]: np.asarray(v, float) for k, v in tensors.items() if k.endswith(".weight")}
    biases = {k[: -len(".bias")]: np.asarray(v, float) for k, v in tensors.items() if k.endswith(".bias")}
    extra = sorted(set(tensors) - {f"{k}.weight" for k in weights} - {f"{k}.bias" for k in biases})
    if extra or set(biases) - set(weights):
        raise ValueError(f"{where}: expected only '<layer>.weight' and '<layer>.bias' keys of Linear layers, got extra "
                         f"key(s) {(extra or sorted(set(biases) - set(weights)))[:5]}")
    from ..io import _natural  # the order io reads one-hidden-layer state_dicts in

    names = sorted(weights, key=_natural)
    if len(names) < 2:
        raise ValueError(f"{where}: a network needs at least two Linear layers, found {names}")
    for a, b in zip(names, names[1:]):
        if weights[a].ndim != 2 or weights[b].ndim != 2 or weights[a].shape[0] != weights[b].shape[1]:
            raise ValueError(f"{where}: layer '{b}' (weight shape {weights[b].shape}) does not take the output of "
                             f"layer '{a}' (weight shape {weights[a].shape}); layers are read in the order {names}")
    return DeepNet(tuple(weights[n] for n in names), tuple(biases.get(n) for n in names), 1.0, float(negative_slope))
