"""Reading parameter and data files with errors that name the file and the problem.

``--params`` accepts three formats, told apart by the extension (or, for another extension, by
the file's first bytes):

- ``.npz``: keys ``W1, b1, W2, b2`` and optional scalars ``s_plus, s_minus``;
- ``.pt`` / ``.pth`` / ``.ckpt``: a PyTorch ``state_dict`` of ``Linear -> ReLU -> Linear``
  (keys ``0.weight, 0.bias, 2.weight, 2.bias`` for an ``nn.Sequential``, any two layer names
  otherwise), or a checkpoint dict holding one under ``state_dict`` / ``model_state_dict``;
  read with ``torch.load(weights_only=True)``, so no code in the file runs (extra ``torch``);
- ``.safetensors``: the same tensors (or ``W1, b1, W2, b2``), with ``s_plus`` / ``s_minus``
  optionally in the metadata (extra ``safetensors``).

``--data`` is an ``.npz`` with ``X`` and ``Y``.
"""

from __future__ import annotations

import os
import re
import zipfile

import numpy as np

from .model import Direction, TwoLayerNet

__all__ = ["InputError", "load_npz", "load_params", "load_data", "save_direction", "params_format",
           "two_layer_from_tensors", "TORCH_SUFFIXES", "SAFETENSORS_SUFFIXES"]

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
_NPZ_KEYS = ("W1", "b1", "W2", "b2")
_SLOPES = ("s_plus", "s_minus")
_FORMATS_HINT = (".npz (W1, b1, W2, b2), .pt/.pth/.ckpt (a PyTorch state_dict or checkpoint) "
                 "or .safetensors")


class InputError(ValueError):
    """A file or value the user supplied cannot be used; the message says which and why."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _exists(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise InputError(f"{what} file {path!r} does not exist")
    if os.path.isdir(path):
        raise InputError(f"{what} path {path!r} is a directory, expected a file")


def load_npz(path: str, what: str) -> dict:
    """All arrays of an ``.npz`` archive (no pickles)."""
    _exists(path, what)
    try:
        obj = np.load(path, allow_pickle=False)
        if not hasattr(obj, "files"):
            raise ValueError("it holds a single .npy array, not named arrays")
        with obj as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{what} file {path!r} is not a readable .npz archive ({_first_line(exc)})") from exc


def params_format(path: str) -> str:
    """``"npz"``, ``"torch"`` or ``"safetensors"``: by extension, else by the file's first bytes."""
    lower = path.lower()
    if lower.endswith(TORCH_SUFFIXES):
        return "torch"
    if lower.endswith(SAFETENSORS_SUFFIXES):
        return "safetensors"
    if lower.endswith(".npz"):
        return "npz"
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                if any(n.endswith("data.pkl") for n in z.namelist()):
                    return "torch"
        elif len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
            return "safetensors"
    except OSError:
        pass
    return "npz"


def _require(arrays: dict, keys, path: str, what: str) -> None:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise InputError(f"{what} file {path!r} lacks key(s) {missing}; it has {sorted(arrays)}")


def _scalar(value, name: str, path: str) -> float:
    arr = np.asarray(value, dtype=float)
    if arr.size != 1:
        raise InputError(f"--params file {path!r}: {name} must be a scalar, got shape {arr.shape}")
    return float(arr.reshape(()))


def _slopes(stored: dict, given: dict, path: str) -> dict:
    """The activation slopes: stored in the file, else given on the command line, else ReLU."""
    out = {}
    for name in _SLOPES:
        file_value = None if stored.get(name) is None else _scalar(stored[name], name, path)
        cli_value = given.get(name)
        if file_value is not None and cli_value is not None and float(cli_value) != file_value:
            raise InputError(f"--{name.replace('_', '-')} {cli_value:g} contradicts {name} = {file_value:g} stored "
                             f"in --params file {path!r}")
        value = file_value if file_value is not None else cli_value
        if value is not None:
            out[name] = value
    return out


def _net(kw: dict, path: str) -> TwoLayerNet:
    try:
        return TwoLayerNet(**kw)
    except (TypeError, ValueError) as exc:
        raise InputError(f"--params file {path!r}: {exc}") from exc


def load_params(path: str, no_bias1: bool = False, no_bias2: bool = False, s_plus: float | None = None,
                s_minus: float | None = None) -> TwoLayerNet:
    """The network in ``path`` (``.npz``, PyTorch ``.pt``/``.pth``/``.ckpt`` or ``.safetensors``).

    ``no_bias1`` / ``no_bias2``: the network has no ``b1`` / ``b2``; the key must then be absent.
    In an ``.npz`` (and a file with keys ``W1, W2``) an absent bias key needs the flag; in a PyTorch
    state_dict a layer without a ``bias`` key is ``nn.Linear(..., bias=False)``, so no flag is needed.
    ``s_plus`` / ``s_minus``: the activation's slopes when the file does not store them (default ReLU);
    a value that contradicts the file is an error.
    """
    _exists(path, "--params")
    fmt = params_format(path)
    given = {"s_plus": s_plus, "s_minus": s_minus}
    if fmt == "npz":
        return _from_named(load_npz(path, "--params"), {}, path, no_bias1, no_bias2, given)
    tensors, meta = _read_torch(path) if fmt == "torch" else _read_safetensors(path)
    if set(tensors) <= set(_NPZ_KEYS) | set(_SLOPES) and "W1" in tensors:
        return _from_named(tensors, meta, path, no_bias1, no_bias2, given)
    kw = two_layer_from_tensors(tensors, path)
    for key, flag in (("b1", no_bias1), ("b2", no_bias2)):
        if flag and kw[key] is not None:
            raise InputError(f"--params file {path!r} has a bias for {key} but --no-bias{key[1]} says the network has none")
    return _net({**kw, **_slopes(meta, given, path)}, path)


def _from_named(arrays: dict, meta: dict, path: str, no_bias1: bool, no_bias2: bool, given: dict) -> TwoLayerNet:
    """Keys ``W1, b1, W2, b2`` (biases absent only with their flag) and optional ``s_plus, s_minus``."""
    absent = {"b1": no_bias1, "b2": no_bias2}
    for key, flag in absent.items():
        if flag and key in arrays:
            raise InputError(f"--params file {path!r} has key {key!r} but --no-bias{key[1]} says the network has none")
    keys = [k for k in _NPZ_KEYS if not absent.get(k)]
    _require(arrays, keys, path, "--params")
    kw = {k: arrays.get(k) for k in _NPZ_KEYS}
    stored = {**meta, **{k: arrays[k] for k in _SLOPES if k in arrays}}
    return _net({**kw, **_slopes(stored, given, path)}, path)


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def two_layer_from_tensors(tensors: dict, path: str) -> dict:
    """``W1, b1, W2, b2`` from a state_dict of exactly two linear layers (``<layer>.weight`` / ``.bias``).

    The hidden layer is the one whose output width feeds the other; when both orders fit (square
    shapes) the layer names decide in natural order (``0`` before ``2``, ``fc1`` before ``fc2``).
    A missing ``<layer>.bias`` means that layer has no bias (``None``).
    """
    expected = ("sospcheck reads one hidden layer, Linear -> ReLU -> Linear, whose state_dict has keys "
                "like '0.weight', '0.bias', '2.weight', '2.bias'")
    layers: dict = {}
    for key, value in tensors.items():
        layer, _, param = key.rpartition(".")
        if param not in ("weight", "bias") or not layer:
            raise InputError(f"--params file {path!r}: unexpected key {key!r}; {expected}")
        layers.setdefault(layer, {})[param] = value
    names = sorted(layers, key=_natural)
    if len(names) != 2 or any("weight" not in layers[n] for n in names):
        found = ", ".join(f"{n} ({'+'.join(sorted(layers[n]))})" for n in names) or "no tensors"
        raise InputError(f"--params file {path!r} holds {len(names)} layer(s): {found}; {expected}")
    for n in names:
        w, b = layers[n]["weight"], layers[n].get("bias")
        if w.ndim != 2 or (b is not None and b.shape != (w.shape[0],)):
            shapes = f"weight {tuple(w.shape)}" + ("" if b is None else f", bias {tuple(b.shape)}")
            raise InputError(f"--params file {path!r}: layer {n!r} has {shapes}; a Linear layer has weight "
                             "(out, in) and bias (out,)")
    first, second = (layers[n] for n in names)
    fits = first["weight"].shape[0] == second["weight"].shape[1]
    if not fits and second["weight"].shape[0] == first["weight"].shape[1]:
        first, second = second, first
    elif not fits:
        raise InputError(f"--params file {path!r}: the layers' widths do not chain: {names[0]}.weight "
                         f"{tuple(first['weight'].shape)}, {names[1]}.weight {tuple(second['weight'].shape)}")
    return {"W1": first["weight"], "b1": first.get("bias"), "W2": second["weight"], "b2": second.get("bias")}


def _read_torch(path: str) -> tuple[dict, dict]:
    """``(tensors as float64 arrays, checkpoint-level s_plus/s_minus)`` via ``torch.load(weights_only=True)``."""
    try:
        import torch
    except ImportError as exc:
        raise InputError(f"--params file {path!r} is a PyTorch file; reading it needs PyTorch: "
                         "pip install 'sospcheck[torch]'") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        raise InputError(f"--params file {path!r} is not a PyTorch state_dict or checkpoint readable with "
                         f"torch.load(weights_only=True) ({_first_line(exc)}); save model.state_dict(), "
                         "not the module") from exc
    meta: dict = {}
    if isinstance(obj, dict) and not _all_tensors(obj, torch):
        inner = next((obj[k] for k in ("state_dict", "model_state_dict") if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise InputError(f"--params file {path!r} is a dict with keys {sorted(map(str, obj))[:8]} but neither "
                             "a state_dict of tensors nor a checkpoint with 'state_dict' or 'model_state_dict'")
        meta = {k: obj[k] for k in _SLOPES if k in obj}
        obj = inner
    if not isinstance(obj, dict) or not _all_tensors(obj, torch):
        kind = type(obj).__name__ if not isinstance(obj, dict) else "a dict with non-tensor values"
        raise InputError(f"--params file {path!r} holds {kind}; expected a state_dict (name -> tensor)")
    return {str(k): _to_numpy(v, torch) for k, v in obj.items()}, {k: _to_numpy(v, torch) for k, v in meta.items()}


def _all_tensors(d: dict, torch) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def _to_numpy(value, torch) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64).numpy()
    return np.asarray(value, dtype=float)


def _read_safetensors(path: str) -> tuple[dict, dict]:
    """``(tensors as float64 arrays, metadata s_plus/s_minus)``; through torch when installed (bf16)."""
    try:
        from safetensors import safe_open
    except ImportError as exc:
        raise InputError(f"--params file {path!r} is a safetensors file; reading it needs the safetensors "
                         "package: pip install 'sospcheck[safetensors]'") from exc
    try:
        import torch
        framework = "pt"
    except ImportError:
        torch, framework = None, "numpy"
    try:
        with safe_open(path, framework=framework) as f:
            raw = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(f"--params file {path!r} is not a readable safetensors file ({_first_line(exc)})") from exc
    tensors = {k: (_to_numpy(v, torch) if torch is not None else np.asarray(v, dtype=float)) for k, v in raw.items()}
    meta = {}
    for k in _SLOPES:
        if k in metadata:
            try:
                meta[k] = float(metadata[k])
            except ValueError as exc:
                raise InputError(f"--params file {path!r}: metadata {k}={metadata[k]!r} is not a number") from exc
    return tensors, meta


def load_data(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Keys ``X`` and ``Y`` of an ``.npz``."""
    arrays = load_npz(path, "--data")
    _require(arrays, ("X", "Y"), path, "--data")
    return arrays["X"], arrays["Y"]


def save_direction(path: str, d: Direction) -> None:
    """Keys ``W1, b1, W2, b2``; an absent bias is left out."""
    np.savez(path, **{k: v for k, v in (("W1", d.W1), ("b1", d.b1), ("W2", d.W2), ("b2", d.b2)) if v is not None})
