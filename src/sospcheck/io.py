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


def load_params(path: str, no_bias1: bool = False, no_bias2: bool = False) -> TwoLayerNet:
    """Keys ``W1, b1, W2, b2`` and optional scalars ``s_plus, s_minus`` (default ReLU).

    ``no_bias1`` / ``no_bias2``: the network has no ``b1`` / ``b2``; the key must then be absent.
    """
    arrays = load_npz(path, "--params")
    absent = {"b1": no_bias1, "b2": no_bias2}
    for key, flag in absent.items():
        if flag and key in arrays:
            raise InputError(f"--params file {path!r} has key {key!r} but --no-bias{key[1]} says the network has none")
    keys = [k for k in ("W1", "b1", "W2", "b2") if not absent.get(k)]
    _require(arrays, keys, path, "--params")
    kw = {k: arrays.get(k) for k in ("W1", "b1", "W2", "b2")}
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
    """Keys ``W1, b1, W2, b2``; an absent bias is left out."""
    np.savez(path, **{k: v for k, v in (("W1", d.W1), ("b1", d.b1), ("W2", d.W2), ("b2", d.b2)) if v is not None})
