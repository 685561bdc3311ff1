"""Reading parameter and data files with errors that name the file and the problem.

``--params`` accepts three formats, told apart by the extension (or, for another extension, by
the file's first bytes):

- ``.npz``: keys ``W1, b1, W2, b2`` and optional scalars ``s_plus, s_minus`` (also ``X, Y`` when the
  file is the ``--data`` file too; any other key is refused);
- ``.pt`` / ``.pth`` / ``.ckpt``: a PyTorch ``state_dict`` of ``Linear -> ReLU -> Linear``
  (keys ``0.weight, 0.bias, 2.weight, 2.bias`` for an ``nn.Sequential``, any two layer names
  otherwise), or a checkpoint dict holding one under ``state_dict`` / ``model_state_dict``;
  read with ``torch.load(weights_only=True)``, so no code in the file runs (extra ``torch``);
- ``.safetensors``: the same tensors (or ``W1, b1, W2, b2``), with ``s_plus`` / ``s_minus``
  optionally in the metadata (extra ``safetensors``).

``--data`` is an ``.npz`` with ``X`` and ``Y``.

Only regular files are read (a pipe or device could make a read never end). Every array must hold
real numbers (float, int or bool; no complex, text, dates or objects) and have at most
:data:`sospcheck.model.MAX_ELEMENTS` elements; both are checked from the ``.npy`` header, the
tensor's shape or the safetensors header, before the data are read or converted.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import stat
import zipfile

import numpy as np

from .model import Direction, TwoLayerNet, check_size, dtype_problem, real_array

__all__ = ["InputError", "load_npz", "load_params", "load_data", "save_direction", "params_format",
           "two_layer_from_tensors", "check_writable", "clean_message", "TORCH_SUFFIXES", "SAFETENSORS_SUFFIXES"]

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)
_NPZ_KEYS = ("W1", "b1", "W2", "b2")
_SLOPES = ("s_plus", "s_minus")
_DATA_KEYS = ("X", "Y")
_HEADER_LIMIT = 100_000_000  # bytes of a safetensors JSON header, the format's own limit
# the optional dependencies: (kind of file, what to install, extra)
_EXTRAS = {"torch": ("a PyTorch", "PyTorch", "torch"),
           "safetensors": ("a safetensors", "the safetensors package", "safetensors")}
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
# torch's advice around the reason a weights_only load failed
_TORCH_HINTS = ("Weights only load failed", "(1)", "(2)", "Check the documentation", "Please file an issue")


class InputError(ValueError):
    """A file or value the user supplied cannot be used; the message says which and why."""


def clean_message(text, limit: int | None = 300) -> str:
    """``text`` as one line (of at most ``limit`` characters), without terminal escape codes or control characters."""
    text = "".join(ch if ch.isprintable() else " " for ch in _ANSI.sub("", str(text)))
    text = " ".join(text.split())
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


def _reason(exc: BaseException) -> str:
    """The line of a foreign exception that says what went wrong, cleaned; torch's advice dropped."""
    lines = [clean_message(line) for line in _ANSI.sub("", str(exc)).splitlines()]
    lines = [line for line in lines if line]
    useful = [line for line in lines if not line.startswith(_TORCH_HINTS)] or lines
    if not useful:
        return type(exc).__name__
    text = useful[0].removeprefix("WeightsUnpickler error: ")
    # a long line goes on with advice after its first sentence
    return text.split(". ")[0] + "." if len(text) > 120 and ". " in text else text


def _optional(module: str, path: str | None = None):
    """The optional dependency ``module``; when missing, None (``path`` None) or an error naming the file."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if path is None:
            return None
        kind, package, extra = _EXTRAS[module]
        raise InputError(f"--params file {path!r} is {kind} file; reading it needs {package}: "
                         f"pip install 'sospcheck[{extra}]'") from exc


def _regular_file(path: str, what: str) -> int:
    """The size of ``path``; refuses a missing path, a directory, and a pipe or device (reading one may never end)."""
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise InputError(f"{what} file {path!r} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"{what} file {path!r} cannot be read ({_reason(exc)})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{what} path {path!r} is a directory, expected a file")
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or \
            stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file"
        raise InputError(f"{what} path {path!r} is {kind}; expected a regular file")
    return st.st_size


def check_writable(path: str, option: str) -> None:
    """Fail now, naming ``option``, when ``path`` cannot be written: a directory, a missing folder, a
    read-only file or place. Opening for appending changes nothing; a file created to try is removed."""
    full = os.path.abspath(path)
    if os.path.isdir(full):
        raise InputError(f"{option} {path!r} is a directory; give a file name")
    folder = os.path.dirname(full)
    if not os.path.isdir(folder):
        raise InputError(f"{option} {path!r}: the folder {folder!r} does not exist")
    existed = os.path.lexists(full)
    if existed and os.path.exists(full) and not os.stat(full).st_mode & 0o222:
        # the superuser may open it anyway; /proc files look like this and refuse the write itself
        raise InputError(f"{option} {path!r} is read-only")
    flags = os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | (0 if existed else os.O_CREAT | os.O_EXCL)
    try:
        fd = os.open(full, flags, 0o666)
    except OSError as exc:
        raise InputError(f"{option} {path!r} cannot be written ({exc.strerror or _reason(exc)})") from exc
    os.close(fd)
    if not existed:
        os.unlink(full)


def check_writable_folder(path: str, option: str) -> None:
    """Fail now, naming ``option``, when ``path`` cannot serve as an output folder: an existing
    non-folder, or a folder (or, when it is still to be made, its nearest existing parent) that
    cannot be written."""
    full = os.path.abspath(path)
    if os.path.lexists(full) and not os.path.isdir(full):
        raise InputError(f"{option} {path!r} exists and is not a folder")
    existing = full
    while not os.path.isdir(existing):
        if os.path.lexists(existing):
            raise InputError(f"{option} {path!r}: {existing!r} is not a folder")
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path!r}: the folder {existing!r} cannot be written")


def _open_npz(path: str, what: str) -> zipfile.ZipFile:
    _regular_file(path, what)
    try:
        if zipfile.is_zipfile(path):
            return zipfile.ZipFile(path)
        with open(path, "rb") as f:
            single = f.read(6) == b"\x93NUMPY"
    except Exception as exc:  # zipfile and the OS raise many types
        raise InputError(f"{what} file {path!r} is not a readable .npz archive ({_reason(exc)})") from exc
    why = "it holds a single .npy array, not named arrays" if single else "it is not a zip archive"
    raise InputError(f"{what} file {path!r} is not a readable .npz archive ({why})")


def _members(z: zipfile.ZipFile) -> dict:
    """Array name -> archive member (``W1`` -> ``W1.npy``)."""
    return {(n[:-4] if n.endswith(".npy") else n): n for n in z.namelist()}


def _read_npy(z: zipfile.ZipFile, member: str, key: str, path: str, what: str) -> np.ndarray:
    """One array of an archive; its header's dtype and shape are checked before its data are read."""
    fmt = np.lib.format
    try:
        with z.open(member) as fp:
            version = fmt.read_magic(fp)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy format version {version} is not supported")
            header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = header(fp)
        problem = dtype_problem(dtype)
        if problem is not None:
            raise InputError(f"{what} file {path!r}: array {key!r} holds {problem}; expected real numbers "
                             "(float, int or bool)")
        try:
            check_size(shape, key)
        except ValueError as exc:
            raise InputError(f"{what} file {path!r}: {exc}") from exc
        with z.open(member) as fp:
            return fmt.read_array(fp, allow_pickle=False)
    except InputError:
        raise
    except Exception as exc:  # zipfile, zlib and numpy raise many types
        raise InputError(f"{what} file {path!r} is not a readable .npz archive (array {key!r}: {_reason(exc)})") from exc


def load_npz(path: str, what: str) -> dict:
    """All arrays of an ``.npz`` archive: only real dtypes, at most ``MAX_ELEMENTS`` each, no pickles."""
    with _open_npz(path, what) as z:
        return {k: _read_npy(z, m, k, path, what) for k, m in _members(z).items()}


def params_format(path: str) -> str:
    """``"npz"``, ``"torch"`` or ``"safetensors"``: by extension, else by the file's first bytes."""
    lower = path.lower()
    if lower.endswith(TORCH_SUFFIXES):
        return "torch"
    if lower.endswith(SAFETENSORS_SUFFIXES):
        return "safetensors"
    if lower.endswith(".npz") or not os.path.isfile(path):  # never sniff a pipe or a device: it may never end
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
    try:
        arr = real_array(value, name, "a real number")
    except (TypeError, ValueError) as exc:
        raise InputError(f"--params file {path!r}: {exc}") from exc
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
    _regular_file(path, "--params")
    fmt = params_format(path)
    given = {"s_plus": s_plus, "s_minus": s_minus}
    if fmt == "npz":
        return _from_named(_params_npz(path), {}, path, no_bias1, no_bias2, given)
    tensors, meta = _read_torch(path) if fmt == "torch" else _read_safetensors(path)
    if set(tensors) <= set(_NPZ_KEYS) | set(_SLOPES) and "W1" in tensors:
        return _from_named(tensors, meta, path, no_bias1, no_bias2, given)
    if sum(k.endswith(".weight") for k in tensors) > 2:
        return _deep(tensors, meta, path, no_bias1 or no_bias2, given)
    kw = two_layer_from_tensors(tensors, path)
    for key, flag in (("b1", no_bias1), ("b2", no_bias2)):
        if flag and kw[key] is not None:
            raise InputError(f"--params file {path!r} has a bias for {key} but --no-bias{key[1]} says the network has none")
    return _net({**kw, **_slopes(meta, given, path)}, path)


def _deep(tensors: dict, meta: dict, path: str, bias_flag: bool, given: dict):
    """A state_dict of three or more Linear layers: a :class:`sospcheck.deep.DeepNet` (DESIGN.md section 10),
    the architecture read from the layer names and shapes, the activation slope from the file or the flag."""
    from .deep.model import deep_from_state_dict

    if bias_flag:
        raise InputError(f"--params file {path!r} holds a network with several hidden layers: a layer's missing "
                         "'<layer>.bias' key already says it has no bias; drop --no-bias1/--no-bias2")
    slopes = _slopes(meta, given, path)
    if slopes.get("s_plus", 1.0) != 1.0:
        raise InputError(f"--params file {path!r}: a network with several hidden layers needs s_plus = 1 "
                         "(torch's ReLU / LeakyReLU)")
    try:
        return deep_from_state_dict(tensors, slopes.get("s_minus", 0.0), f"--params file {path!r}")
    except (TypeError, ValueError) as exc:
        raise InputError(str(exc)) from exc


def _params_npz(path: str) -> dict:
    """The weights and slopes of a params ``.npz``; any key but those and ``X, Y`` (the same file may be
    ``--data``) is refused: a file of another model must not be read as this one."""
    with _open_npz(path, "--params") as z:
        members = _members(z)
        unknown = sorted(set(members) - set(_NPZ_KEYS) - set(_SLOPES) - set(_DATA_KEYS))
        if unknown:
            raise InputError(f"--params file {path!r} has unexpected key(s) {unknown}; a params .npz holds W1, b1, "
                             "W2, b2 and optionally s_plus, s_minus (and X, Y when it is also the --data file)")
        return {k: _read_npy(z, members[k], k, path, "--params") for k in _NPZ_KEYS + _SLOPES if k in members}


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
    torch = _optional("torch", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        raise InputError(f"--params file {path!r} is not a PyTorch state_dict or checkpoint readable with "
                         f"torch.load(weights_only=True) ({_reason(exc)}); save model.state_dict(), "
                         "not the module") from exc
    meta: dict = {}
    if isinstance(obj, dict) and not _all_tensors(obj, torch):
        inner = next((obj[k] for k in ("state_dict", "model_state_dict") if isinstance(obj.get(k), dict)), None)
        if inner is None:
            keys = sorted(clean_message(k, limit=40) for k in map(str, obj))[:8]
            raise InputError(f"--params file {path!r} is a dict with keys {keys} but neither "
                             "a state_dict of tensors nor a checkpoint with 'state_dict' or 'model_state_dict'")
        meta = {k: obj[k] for k in _SLOPES if k in obj}
        obj = inner
    if not isinstance(obj, dict) or not _all_tensors(obj, torch):
        kind = type(obj).__name__ if not isinstance(obj, dict) else "a dict with non-tensor values"
        raise InputError(f"--params file {path!r} holds {kind}; expected a state_dict (name -> tensor)")
    return {str(k): _file_array(v, str(k), path, torch) for k, v in obj.items()}, meta


def _all_tensors(d: dict, torch) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def _file_array(value, key: str, path: str, torch=None) -> np.ndarray:
    """A tensor or array read from ``path`` as float64, refusing complex values and sizes over
    ``MAX_ELEMENTS`` (an expanded, stride-0 tensor is small on disk but not once converted)."""
    name = clean_message(key)
    try:
        if torch is not None and isinstance(value, torch.Tensor):
            from .torch import as_numpy

            value = as_numpy(value, name)
        return real_array(value, name)
    except (TypeError, ValueError) as exc:
        raise InputError(f"--params file {path!r}: {clean_message(exc)}") from exc


def _safetensors_header(path: str) -> dict:
    """The JSON header of a safetensors file; each tensor's dtype and shape are checked before any is read."""
    size = _regular_file(path, "--params")
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n <= min(_HEADER_LIMIT, size - 8):
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (OSError, ValueError, RecursionError) as exc:
        raise InputError(f"--params file {path!r} is not a readable safetensors file ({_reason(exc)})") from exc
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise InputError(f"--params file {path!r} is not a readable safetensors file (tensor "
                             f"{clean_message(key)!r} has no valid shape)")
        dtype = str(entry.get("dtype"))
        if dtype.startswith("C"):
            raise InputError(f"--params file {path!r}: tensor {clean_message(key)!r} holds complex numbers "
                             f"({clean_message(dtype)}); expected real weights")
        try:
            check_size(shape, clean_message(key))
        except ValueError as exc:
            raise InputError(f"--params file {path!r}: {exc}") from exc
    return header


def _read_safetensors(path: str) -> tuple[dict, dict]:
    """``(tensors as float64 arrays, metadata s_plus/s_minus)``; through torch when installed (bf16)."""
    safetensors = _optional("safetensors", path)
    torch = _optional("torch")
    metadata = _safetensors_header(path).get("__metadata__") or {}
    try:
        with safetensors.safe_open(path, framework="numpy" if torch is None else "pt") as f:
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise InputError(f"--params file {path!r} is not a readable safetensors file ({_reason(exc)})") from exc
    tensors = {k: _file_array(v, k, path, torch) for k, v in raw.items()}
    meta = {}
    for k in _SLOPES:
        if k in metadata:
            try:
                meta[k] = float(metadata[k])
            except (TypeError, ValueError) as exc:
                raise InputError(f"--params file {path!r}: metadata {k}={clean_message(repr(metadata[k]))} is not a "
                                 "number") from exc
    return tensors, meta


def load_data(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Keys ``X`` and ``Y`` of an ``.npz`` (other keys, such as the weights of the same file, are not read)."""
    with _open_npz(path, "--data") as z:
        members = _members(z)
        _require(members, _DATA_KEYS, path, "--data")
        return _read_npy(z, members["X"], "X", path, "--data"), _read_npy(z, members["Y"], "Y", path, "--data")


def save_direction(path: str, d: Direction) -> None:
    """Keys ``W1, b1, W2, b2`` (an absent bias left out), an ``.npz`` archive written to exactly ``path``
    (NumPy would add ``.npz`` to a name without it). A deep network's direction: ``W1, b1, W2, ...`` per
    parameter, and ``zeta_W1, ...`` for the second-order part of a curve (DESIGN.md 10.6)."""
    if hasattr(d, "arrays"):
        names = [f"{kind}{l + 1}" for l, (_, b) in enumerate(_layer_pairs(d.shapes)) for kind in ("W", "b")[:1 + b]]
        arrays = dict(zip(names, d.arrays()))
        if d.zeta is not None:
            arrays.update({f"zeta_{n}": a for n, a in zip(names, d.arrays_of(d.zeta))})
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        return
    with open(path, "wb") as f:
        np.savez(f, **{k: v for k, v in (("W1", d.W1), ("b1", d.b1), ("W2", d.W2), ("b2", d.b2)) if v is not None})


def _layer_pairs(shapes) -> list[tuple]:
    """``(weight shape, has bias)`` per layer from parameter shapes in ``model.parameters()`` order."""
    out, i = [], 0
    while i < len(shapes):
        has_bias = i + 1 < len(shapes) and len(shapes[i + 1]) == 1
        out.append((shapes[i], has_bias))
        i += 2 if has_bias else 1
    return out
