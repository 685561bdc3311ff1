"""The data on a PyTorch device for ``backend="torch"``: the check's passes over ``X`` run there.

Within :func:`placement` (entered by ``check(..., backend="torch")``), every ``Xbar`` the check forms
(``TwoLayerNet.augment``) is a :class:`DeviceData`: ``[X 1]`` uploaded once per array as one float64
tensor. The forward passes (``N = Xbar Z'``), the first-order products (``C = (S * a)' Xbar``), the
verification's directions (``T = Xbar dZ'``), the data span's Gram and the Hessian products (which use
the same tensor) then run on the device; only the small operands and the (m, dh)-sized results cross.
The elementwise work on (m, dh) arrays stays on the host. DESIGN.md section 5. Needs the ``torch`` extra.
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np

from .augmented import DataOperator, then_columns

__all__ = ["DeviceData", "placement", "on_host", "placed", "resolve_device"]

# (arrays placed so far: key -> (the host array, kept alive so that its address stays its own; its
# DeviceData), the torch.device); None outside a placement
_PLACEMENT: contextvars.ContextVar = contextvars.ContextVar("sospcheck_placement", default=None)

# host rows copied per upload step: bounds the host-side temporary of a read-only X
_UPLOAD_ROWS_ELEMENTS = 1 << 22


class DeviceData(DataOperator):
    """``[X 1]`` (``bias``) or ``X`` as one float64 tensor ``t`` on a device; products return host arrays."""

    def __init__(self, t, bias: bool):
        self.t, self.bias = t, bias
        self.shape = (int(t.shape[0]), int(t.shape[1]))

    @classmethod
    def upload(cls, X: np.ndarray, bias: bool, device) -> "DeviceData":
        """``X`` (m, dx) to ``device``, with the ones column when ``bias``; the host copies one block of
        rows at a time (torch cannot wrap a read-only array)."""
        import torch

        m, dx = X.shape
        t = torch.empty((m, dx + int(bias)), dtype=torch.float64, device=device)
        step = max(1, _UPLOAD_ROWS_ELEMENTS // max(dx, 1))
        for s in range(0, m, step):
            block = np.array(X[s : s + step], dtype=np.float64)
            t[s : s + step, :dx] = torch.from_numpy(block).to(device)
        if bias:
            t[:, dx] = 1.0
        return cls(t, bias)

    def _put(self, M):
        import torch

        return torch.as_tensor(np.array(M, dtype=np.float64), device=self.t.device)

    @staticmethod
    def _get(t) -> np.ndarray:
        return t.cpu().numpy()

    def _index(self, idx):
        import torch

        if isinstance(idx, (slice, int, np.integer)):
            return idx
        a = np.asarray(idx)
        # as NumPy reads it: a boolean mask, else integer positions (torch would take uint8 as a mask)
        a = a if a.dtype == bool else a.astype(np.int64)
        return torch.as_tensor(a, device=self.t.device)

    def __matmul__(self, M) -> np.ndarray:
        M = np.asarray(M)
        self._check_rows(M)
        return self._get(self.t @ self._put(M))

    def __rmatmul__(self, B) -> np.ndarray:
        return self._get(self._put(B) @ self.t)

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, tuple):
            return then_columns(self[idx[0]], idx[1:])
        # a copy: on the CPU device a view of ``t`` would let a caller's in-place edit change the data
        return self._get(self.t[self._index(idx)].clone())

    def row_norms(self) -> np.ndarray:
        import torch

        return self._get(torch.linalg.vector_norm(self.t, dim=1))

    def gram(self) -> np.ndarray:
        return self._get(self.t.T @ self.t)

    def frobenius_norm(self) -> float:
        import torch

        return float(torch.linalg.vector_norm(self.t))

    def abs_max(self) -> float:
        if not self.t.numel():
            return 0.0
        return max(float(self.t.max()), -float(self.t.min()))

    def rows(self, idx) -> "DeviceData":
        return DeviceData(self.t[self._index(idx)], self.bias)

    def in_basis(self, V: np.ndarray) -> "DeviceData":
        return DeviceData(self.t @ self._put(V), False)

    def toarray(self) -> np.ndarray:
        return self._get(self.t.clone())


def resolve_device(device=None):
    """``device`` as a concrete ``torch.device`` (default: a GPU when available; "cuda" becomes "cuda:N",
    N the current one, so that tensors made on it compare equal to it)."""
    import torch

    from .validation import torch_device

    dev = torch_device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


@contextlib.contextmanager
def placement(device=None):
    """Within this block :func:`placed` puts the data on ``device`` (:func:`resolve_device`).
    Leaving it drops the device copies."""
    dev = resolve_device(device)
    token = _PLACEMENT.set(({}, dev))
    try:
        yield dev
    finally:
        _PLACEMENT.reset(token)


@contextlib.contextmanager
def on_host():
    """Within this block the data stay on the host, even inside an outer :func:`placement`."""
    token = _PLACEMENT.set(None)
    try:
        yield
    finally:
        _PLACEMENT.reset(token)


def placed(X, bias: bool) -> DeviceData | None:
    """``Xbar`` of ``X`` on the device of the current :func:`placement` (uploaded on first use), or None
    outside one. Arrays are told apart by their memory (address, shape, strides), so that the views of
    one array the check makes share one upload; each is kept alive until the placement ends."""
    state = _PLACEMENT.get()
    if state is None or not isinstance(X, np.ndarray) or X.ndim != 2:
        return None
    cache, dev = state
    key = (X.__array_interface__["data"][0], X.shape, X.strides, X.dtype.str, bool(bias))
    hit = cache.get(key)
    if hit is None:
        hit = cache[key] = (X, DeviceData.upload(X, bias, dev))
    return hit[1]
