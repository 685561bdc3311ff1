"""PyTorch and state_dict entry points for deep networks (DESIGN.md section 10).

``nn.Sequential`` (or any module laid out the same way) of ``nn.Linear`` layers with one kind of
``nn.ReLU`` / ``nn.LeakyReLU`` between them, any depth, biases optional::

    from sospcheck.torch import check_model      # routes two or more hidden layers here
    result = check_model(model, X, Y, nn.MSELoss())
    if result.descent:
        with torch.no_grad():
            for p, d in zip(model.parameters(), result.descent.direction.tensors(result.descent.step)):
                p.add_(d.to(p.dtype))
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..result import CheckResult
from ..torch import check_forward as check_forward_of
from .check import check_deep
from .model import DeepNet, deep_forward, deep_from_state_dict

__all__ = ["deep_from_torch", "deep_from_state_dict", "check_model", "linear_stack"]

_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)


def _leaves(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if not any(True for _ in m.children())]


def linear_stack(module: nn.Module, negative_slope: float | None = None) -> tuple[list[nn.Linear], float]:
    """The ``nn.Linear`` layers of ``module`` (leaf modules ``Linear, act, Linear, act, ..., Linear``, one
    activation kind) and the activation's negative-side slope. A module whose ``forward`` applies the
    activation functionally holds only Linear layers: pass ``negative_slope`` (0.0 for ReLU)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}")
    layers = _leaves(module)
    names = " -> ".join(type(m).__name__ for m in layers) or "(no layers)"
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    acts = [m for m in layers if not isinstance(m, nn.Linear)]
    alternating = (len(layers) == 2 * len(linears) - 1 and all(isinstance(m, nn.Linear) for m in layers[::2])
                   and all(type(m) in _ACTIVATIONS for m in layers[1::2]))
    if len(linears) >= 2 and alternating:
        slopes = {float(a.negative_slope) if isinstance(a, nn.LeakyReLU) else 0.0 for a in acts}
        if len(slopes) != 1:
            raise ValueError(f"`module` mixes activations with negative slopes {sorted(slopes)}; sospcheck needs one "
                             "activation h for every hidden layer")
        slope = slopes.pop()
        if negative_slope is not None and float(negative_slope) != slope:
            raise ValueError(f"`negative_slope` = {negative_slope} contradicts the module's activation slope {slope}")
    elif len(linears) >= 2 and len(layers) == len(linears):
        if negative_slope is None:
            raise ValueError("`module` holds nn.Linear layers and no activation module; if its forward applies ReLU or "
                             "leaky ReLU functionally, pass `negative_slope` (0.0 for ReLU)")
        slope = float(negative_slope)
    else:
        raise ValueError("sospcheck handles nn.Linear layers with nn.ReLU | nn.LeakyReLU between them; "
                         f"`module` has {names}")
    for a, b in zip(linears, linears[1:]):
        if a.out_features != b.in_features:
            raise ValueError(f"layer widths do not chain: a Linear with out_features={a.out_features} feeds one with "
                             f"in_features={b.in_features}")
    if slope < 0.0 or slope == 1.0:
        raise ValueError(f"the activation's negative_slope must be >= 0 and != 1 for a ReLU-like network, got {slope}")
    return linears, slope


def _array(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().to(torch.float64).numpy().copy()


def deep_from_torch(module: nn.Module, *, negative_slope: float | None = None, check_forward: bool = True) -> DeepNet:
    """The :class:`DeepNet` (float64) with ``module``'s weights; ``check_forward`` runs ``module`` on a few random
    inputs (own generator) and requires the same outputs."""
    linears, slope = linear_stack(module, negative_slope)
    net = DeepNet(tuple(_array(m.weight) for m in linears), tuple(_array(m.bias) for m in linears), 1.0, slope)
    if check_forward:
        scale = 4.0 * float(np.prod([np.abs(W).sum() for W in net.weights]))
        check_forward_of(module, net.dx, net.dy, linears[0].weight, lambda x: deep_forward(net, x).out, scale,
                         "its Linear layers with the activation between them")
    return net


def check_model(model: nn.Module, X, Y, criterion: nn.Module | None = None, *, negative_slope: float | None = None,
                **check_kwargs) -> CheckResult:
    """:func:`sospcheck.deep.check_deep` on ``model``'s weights with the risk ``criterion(model(X), Y)`` (default
    ``nn.MSELoss()``), losses mapped as :func:`sospcheck.torch.torch_loss`. ``snap`` and ``nearby`` are not
    available for deep networks yet."""
    from ..torch import as_numpy, torch_loss

    for key in ("loss", "reduction"):
        if key in check_kwargs:
            raise TypeError(f"check_model() takes the loss from `criterion`; do not pass `{key}`")
    for key in ("snap", "nearby"):
        if check_kwargs.pop(key, False):
            raise ValueError(f"`{key}=True` is not supported for networks with two or more hidden layers "
                             "(sospcheck.deep); check the point as it is")
    for key in ("backend", "seed", "snap_tol"):  # the derivatives always come from torch; nothing is random
        check_kwargs.pop(key, None)
    spec = torch_loss(nn.MSELoss() if criterion is None else criterion)
    net = deep_from_torch(model, negative_slope=negative_slope)
    return check_deep(net, as_numpy(X, "X"), spec.targets(Y), loss=spec.loss, reduction=spec.reduction, **check_kwargs)
