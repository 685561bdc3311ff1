"""Reading parameter and data files (``.npz``) with errors that name the file and the problem."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from .model import Direction, TwoLayerNet

__all__ = ["InputError", "load_npz", "load_params", "load_data", "save_direction"]


class InputError(ValueError):
    """A file or value the user supplied cannot be used; the message says which and why."""


def load_npz(path: str, what: str) -> dict:
    if not os.path.exists(path):
        raise InputError(f"{what} file {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{what} file {path!r} is not a readable .npz archive ({exc})") from exc


def _require(arrays: dict, keys, path: str, what: str) -> None:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise InputError(f"{what} file {path!r} lacks key(s) {missing}; it has {sorted(arrays)}")


def load_params(path: str) -> TwoLayerNet:
    """Keys ``W1, b1, W2, b2`` and optional scalars ``s_plus, s_minus`` (default ReLU)."""
    arrays = load_npz(path, "--params")
    _require(arrays, ("W1", "b1", "W2", "b2"), path, "--params")
    kw = {k: arrays[k] for k in ("W1", "b1", "W2", "b2")}
    for k in ("s_plus", "s_minus"):
        if k in arrays:
            kw[k] = arrays[k]
    try:
        return TwoLayerNet(**kw)
    except (TypeError, ValueError) as exc:
        raise InputError(f"--params file {path!r}: {exc}") from exc


def load_data(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Keys ``X`` and ``Y``."""
    arrays = load_npz(path, "--data")
    _require(arrays, ("X", "Y"), path, "--data")
    return arrays["X"], arrays["Y"]


def save_direction(path: str, d: Direction) -> None:
    np.savez(path, W1=d.W1, b1=d.b1, W2=d.W2, b2=d.b2)
