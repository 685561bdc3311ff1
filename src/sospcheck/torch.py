"""PyTorch bridge: ``nn.Linear -> nn.ReLU | nn.LeakyReLU -> nn.Linear`` to and from :class:`TwoLayerNet`,
and torch criteria to sospcheck losses (optional extra ``torch``).

From a trained model to a verdict::

    from sospcheck.torch import check_model
    result = check_model(model, X, Y, nn.MSELoss())
    print(result.verdict)

The risk that :func:`check_model` tests is exactly the criterion's value on the full batch
(``criterion(model(X), Y)``, plus ``weight_decay / 2 * |z|^2`` if given), so the losses and
decreases it reports are in torch's convention. The mapping:

- ``nn.MSELoss(reduction="sum")``: per-sample ``l_i = |yhat_i - y_i|^2``, summed (twice
  sospcheck's ``"squared"``). ``reduction="mean"`` averages over all ``m * dy`` elements:
  ``l_i = |yhat_i - y_i|^2 / dy`` with reduction ``"mean"`` (over the ``m`` samples).
  Both are reported as loss ``"mse"``.
- ``nn.BCEWithLogitsLoss``: sospcheck ``"logistic"`` (labels {0, 1}), same reduction.
- ``nn.CrossEntropyLoss``: sospcheck ``"cross_entropy"`` (integer labels or one-hot rows).

A positive rescaling of the risk never changes a verdict, only the numbers reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch  # absolute import: the real PyTorch, not this module
from torch import nn

from .check import check
from .losses import LOSSES, Loss
from .model import TwoLayerNet, check_size, forward, real_array
from .result import CheckResult
from .validation import torch_device

__all__ = ["from_torch", "to_torch", "load_into", "torch_loss", "TorchLoss", "check_model", "as_numpy",
           "linear_layers"]

_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU)


def as_numpy(value, name: str) -> np.ndarray:
    """A tensor (any device or dtype) or array-like as a float64 NumPy array (labels stay exact).

    Complex values, text and dates are refused, and so is a size over ``sospcheck.model.MAX_ELEMENTS``,
    checked before converting: an expanded (stride-0) tensor is small until it is copied.
    """
    if not isinstance(value, torch.Tensor):
        return real_array(value, name, "a tensor or a numeric array of real numbers")
    if value.is_complex():
        raise TypeError(f"`{name}` must be a real tensor, got dtype {value.dtype}")
    check_size(value.shape, name)
    try:
        return value.detach().cpu().to(torch.float64).numpy()
    except (RuntimeError, TypeError) as exc:  # quantized and other tensors with no float64 view
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise TypeError(f"`{name}` of dtype {value.dtype} cannot be converted to float64 ({reason})") from exc


def _leaves(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if not any(True for _ in m.children())]


def _describe(layers: list[nn.Module]) -> str:
    return " -> ".join(type(m).__name__ for m in layers) or "(no layers)"


def linear_layers(module: nn.Module, negative_slope: float | None = None) -> tuple[nn.Linear, nn.Linear, float]:
    """The two ``nn.Linear`` layers of ``module`` and the activation's negative-side slope.

    ``module`` must hold exactly ``Linear, ReLU | LeakyReLU, Linear`` as its leaf modules, in that
    registration order (an ``nn.Sequential`` or a custom module laid out the same way). A module
    that applies the activation functionally (``F.relu`` in ``forward``) holds only the two
    ``Linear`` layers: pass ``negative_slope`` (0.0 for ReLU) to say which activation it uses.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be a torch.nn.Module, got {type(module).__name__}")
    layers = _leaves(module)
    expected = ("sospcheck handles one hidden layer, nn.Linear -> nn.ReLU | nn.LeakyReLU -> nn.Linear; "
                f"`module` has {_describe(layers)}")
    if len(layers) == 3 and isinstance(layers[0], nn.Linear) and isinstance(layers[2], nn.Linear) \
            and type(layers[1]) in _ACTIVATIONS:
        act = layers[1]
        slope = float(act.negative_slope) if isinstance(act, nn.LeakyReLU) else 0.0
        if negative_slope is not None and float(negative_slope) != slope:
            raise ValueError(f"`negative_slope` = {negative_slope} contradicts the module's {act!r}")
    elif len(layers) == 2 and all(isinstance(m, nn.Linear) for m in layers):
        if negative_slope is None:
            raise ValueError("`module` holds two nn.Linear layers and no activation module; if its forward applies "
                             "ReLU or leaky ReLU functionally, pass `negative_slope` (0.0 for ReLU)")
        slope = float(negative_slope)
    else:
        raise ValueError(expected)
    first, second = layers[0], layers[-1]
    if first.out_features != second.in_features:
        raise ValueError(f"the hidden widths do not match: first Linear has out_features={first.out_features}, "
                         f"second has in_features={second.in_features}")
    if slope < 0.0 or slope == 1.0:
        raise ValueError(f"the activation's negative_slope must be >= 0 and != 1 for a ReLU-like network, got {slope}")
    return first, second, slope


def _array(param: torch.Tensor | None, name: str) -> np.ndarray | None:
    return None if param is None else as_numpy(param, name).copy()


def _net(W1, b1, W2, b2, s_minus: float) -> TwoLayerNet:
    try:
        return TwoLayerNet(W1, b1, W2, b2, 1.0, s_minus)
    except (TypeError, ValueError) as exc:
        if b1 is None or b2 is None:
            missing = ", ".join(n for n, b in (("b1", b1), ("b2", b2)) if b is None)
            raise ValueError(f"a Linear layer without bias ({missing}) needs a sospcheck whose TwoLayerNet accepts "
                             f"b1/b2=None; this one does not ({exc})") from exc
        raise


def from_torch(module: nn.Module, *, negative_slope: float | None = None, check_forward: bool = True) -> TwoLayerNet:
    """The :class:`TwoLayerNet` (float64) with the weights of ``module``.

    ``Y(x) = W2 h(W1 x + b1) + b2`` with ``h`` the module's ReLU (``s_minus = 0``) or
    LeakyReLU (``s_minus = negative_slope``); a Linear without bias gives ``b1`` / ``b2 = None``.
    ``check_forward``: run ``module`` on a few random inputs (own generator, global RNG untouched) and
    require the same outputs, which catches a ``forward`` that does something other than its layout says.
    """
    first, second, slope = linear_layers(module, negative_slope)
    net = _net(_array(first.weight, "W1"), _array(first.bias, "b1"), _array(second.weight, "W2"),
               _array(second.bias, "b2"), slope)
    if check_forward:
        _check_forward(module, net, first.weight)
    return net


def _check_forward(module: nn.Module, net: TwoLayerNet, ref: torch.Tensor) -> None:
    scale = float(np.sum(np.abs(net.W2)) * np.max(np.abs(net.Z)) * 4.0)
    check_forward(module, net.dx, net.dy, ref, lambda x: forward(net, x).out, scale, "Linear -> activation -> Linear")


def check_forward(module: nn.Module, dx: int, dy: int, ref: torch.Tensor, outputs, scale: float, layout: str) -> None:
    """Run ``module`` on a few random inputs (own generator, global RNG untouched) and require the outputs that
    ``outputs`` (NumPy, float64) computes, to the precision of ``ref``'s dtype relative to ``scale``: a
    ``forward`` that does something other than its ``layout`` is refused."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(5, dx, generator=gen, dtype=torch.float64)
    try:
        with torch.no_grad():
            got = module(x.to(dtype=ref.dtype, device=ref.device))
    except Exception as exc:  # any failure means the module is not the plain layout we read
        raise ValueError(f"could not run `module` on a ({x.shape[0]}, {dx}) input to confirm that it computes "
                         f"{layout}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(got, torch.Tensor):
        raise ValueError(f"`module` returned {type(got).__name__}, expected a tensor of shape (batch, {dy})")
    got = got.detach().cpu().to(torch.float64).numpy()
    want = outputs(x.numpy())
    # the module computes in its own dtype: allow that precision, relative to the sizes involved
    eps = torch.finfo(ref.dtype).eps if ref.dtype.is_floating_point else 1e-7
    scale = 1.0 + float(np.max(np.abs(want))) + scale
    if got.shape != want.shape or not np.all(np.abs(got - want) <= 1e3 * eps * scale):
        diff = np.max(np.abs(got - want)) if got.shape == want.shape else f"shape {got.shape} vs {want.shape}"
        raise ValueError(f"`module`'s forward does not compute {layout} with the layers it holds (largest difference "
                         f"{diff}); sospcheck cannot represent it")


def to_torch(net: TwoLayerNet, *, dtype: torch.dtype = torch.float64, device=None) -> nn.Sequential:
    """``nn.Sequential(nn.Linear, nn.ReLU | nn.LeakyReLU, nn.Linear)`` computing ``net`` (needs ``s_plus = 1``)."""
    if not isinstance(net, TwoLayerNet):
        raise TypeError(f"`net` must be a sospcheck.TwoLayerNet, got {type(net).__name__}")
    if net.s_plus != 1.0:
        raise ValueError(f"`net.s_plus` must be 1 to be a torch ReLU/LeakyReLU, got {net.s_plus}; rescale "
                         "W2 by s_plus and s_minus by 1/s_plus for the same function")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"`dtype` must be a real floating torch dtype such as torch.float64, got {dtype!r}")
    device = None if device is None else torch_device(device)
    act = nn.ReLU() if net.s_minus == 0.0 else nn.LeakyReLU(net.s_minus)
    model = nn.Sequential(nn.Linear(net.dx, net.dh, bias=net.has_b1), act, nn.Linear(net.dh, net.dy, bias=net.has_b2))
    model.to(dtype=dtype, device=device)
    return load_into(model, net)


def load_into(module: nn.Module, net: TwoLayerNet, *, negative_slope: float | None = None) -> nn.Module:
    """Copy ``net``'s weights into ``module``'s parameters in place (same tensors, so an optimizer
    holding them keeps working); shapes, biases and activation must match."""
    first, second, slope = linear_layers(module, negative_slope)
    if not isinstance(net, TwoLayerNet):
        raise TypeError(f"`net` must be a sospcheck.TwoLayerNet, got {type(net).__name__}")
    if net.s_plus != 1.0 or net.s_minus != slope:
        raise ValueError(f"`net` has activation slopes (s_plus, s_minus) = ({net.s_plus}, {net.s_minus}) but "
                         f"`module` has (1, {slope})")
    pairs = (("W1", first.weight, net.W1), ("b1", first.bias, net.b1),
             ("W2", second.weight, net.W2), ("b2", second.bias, net.b2))
    for name, param, value in pairs:
        if (param is None) != (value is None):
            has = "has" if param is not None else "has no"
            state = "None" if value is None else "set"
            raise ValueError(f"`module` {has} the bias `{name}` but `net.{name}` is {state}")
        if param is not None and tuple(param.shape) != value.shape:
            raise ValueError(f"`net.{name}` has shape {value.shape} but `module`'s parameter has {tuple(param.shape)}")
    with torch.no_grad():
        for _, param, value in pairs:
            if param is not None:
                param.copy_(torch.as_tensor(np.array(value), dtype=param.dtype, device=param.device))
    return module


@dataclass(frozen=True)
class TorchLoss:
    """A torch criterion as sospcheck sees it: ``check(net, X, Y, loss=loss, reduction=reduction)``
    gives the risk ``criterion(model(X), Y)``."""

    loss: Loss | str
    reduction: str
    criterion: str
    ignore_index: int | None = None

    @property
    def name(self) -> str:
        return self.loss if isinstance(self.loss, str) else self.loss.name

    def targets(self, Y) -> np.ndarray:
        """``Y`` as a float64 array; refuses labels the criterion would treat specially."""
        arr = as_numpy(Y, "Y")
        if self.ignore_index is not None and arr.ndim == 1 and np.any(arr == self.ignore_index):
            raise ValueError(f"`Y` holds the criterion's ignore_index {self.ignore_index}; torch would drop those "
                             "samples: remove them from X and Y first")
        return arr


def _mse(per_element_scale: bool) -> Loss:
    """``l_i = c |yhat_i - y_i|^2`` with ``c = 1`` (sum) or ``1 / dy`` (torch's mean over elements)."""

    def c(out):
        return 1.0 / out.shape[1] if per_element_scale else 1.0

    def value(out, Y):
        return c(out) * np.sum((out - Y) ** 2, axis=1)

    def grad(out, Y):
        return 2.0 * c(out) * (out - Y)

    def hess(out, Y):
        m, dy = out.shape
        return np.broadcast_to(2.0 * c(out) * np.eye(dy), (m, dy, dy))

    return Loss("mse", value, grad, hess, LOSSES["squared"].prepare, zero_at_targets=True)


_MSE_SUM, _MSE_MEAN = _mse(False), _mse(True)


def torch_loss(criterion: nn.Module) -> TorchLoss:
    """Map ``nn.MSELoss``, ``nn.BCEWithLogitsLoss`` or ``nn.CrossEntropyLoss`` (reduction "mean" or
    "sum") to the sospcheck loss whose risk equals the criterion's value (see the module docstring)."""
    name = type(criterion).__name__
    reduction = getattr(criterion, "reduction", None)
    if not isinstance(criterion, (nn.MSELoss, nn.BCEWithLogitsLoss, nn.CrossEntropyLoss)):
        raise TypeError(f"`criterion` must be nn.MSELoss, nn.BCEWithLogitsLoss or nn.CrossEntropyLoss, got {name}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"`criterion` {name} has reduction={reduction!r}; sospcheck needs a scalar risk: "
                         "'mean' or 'sum'")
    if isinstance(criterion, nn.MSELoss):
        return TorchLoss(_MSE_MEAN if reduction == "mean" else _MSE_SUM, reduction, name)
    if isinstance(criterion, nn.BCEWithLogitsLoss):
        for attr in ("weight", "pos_weight"):
            if getattr(criterion, attr, None) is not None:
                raise ValueError(f"`criterion` BCEWithLogitsLoss with `{attr}` set is not supported (unweighted only)")
        return TorchLoss("logistic", reduction, name)
    if criterion.weight is not None:
        raise ValueError("`criterion` CrossEntropyLoss with class `weight` is not supported (unweighted only)")
    if criterion.label_smoothing:
        raise ValueError(f"`criterion` CrossEntropyLoss with label_smoothing={criterion.label_smoothing} is not "
                         "supported; use label_smoothing=0")
    return TorchLoss("cross_entropy", reduction, name, ignore_index=criterion.ignore_index)


def check_model(model: nn.Module, X, Y, criterion: nn.Module | None = None, *, negative_slope: float | None = None,
                **check_kwargs) -> CheckResult:
    """:func:`sospcheck.check` on ``model``'s weights with the risk ``criterion(model(X), Y)``
    (default ``nn.MSELoss()``). ``check_kwargs`` go to :func:`sospcheck.check` (``snap=True``,
    ``weight_decay`` as in SGD's ``weight_decay``, ...); ``loss`` and ``reduction`` come from ``criterion``.
    The verdict is about ``result.net``: write it back with :func:`load_into` when ``snap=True`` moved it.
    Two or more hidden layers go to :func:`sospcheck.deep.bridge.check_model` (DESIGN.md section 10).
    """
    if isinstance(model, nn.Module) and sum(isinstance(m, nn.Linear) for m in _leaves(model)) > 2:
        from .deep.bridge import check_model as check_deep_model

        return check_deep_model(model, X, Y, criterion, negative_slope=negative_slope, **check_kwargs)
    for key in ("loss", "reduction"):
        if key in check_kwargs:
            raise TypeError(f"check_model() takes the loss from `criterion`; do not pass `{key}`")
    spec = torch_loss(nn.MSELoss() if criterion is None else criterion)
    net = from_torch(model, negative_slope=negative_slope)
    return check(net, as_numpy(X, "X"), spec.targets(Y), loss=spec.loss, reduction=spec.reduction, **check_kwargs)
