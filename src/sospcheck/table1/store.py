"""Where a sweep keeps its results: one JSON record and one weights file per (setting, seed).

Layout under ``out``: ``preset.json``; ``runs/<dx..._dh..._m...>/seed0007.json`` (the record,
``status`` ok or error) and ``seed0007.npz`` (the raw trained ``W1, b1, W2, b2`` and the training
info). A run is done when its record says ``ok``; trained weights without an ok record are checked
again without retraining. Files are written to a temporary name and renamed, so an interrupted
sweep never leaves half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .presets import Preset, SizeSetting

__all__ = ["Store"]


class Store:
    """The results folder of one preset."""

    def __init__(self, out: str | os.PathLike):
        self.root = Path(out)

    def record_path(self, setting: SizeSetting, seed: int) -> Path:
        return self.root / "runs" / setting.key / f"seed{int(seed):04d}.json"

    def weights_path(self, setting: SizeSetting, seed: int) -> Path:
        return self.record_path(setting, seed).with_suffix(".npz")

    def bind(self, preset: Preset) -> None:
        """Create the folder for ``preset``, or make sure it already holds the same preset."""
        path = self.root / "preset.json"
        want = preset.to_dict()
        if path.exists():
            have = json.loads(path.read_text())
            if have != want:
                diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
                raise ValueError(f"`out` {self.root} holds results of a different preset ({have.get('name')!r}; "
                                 f"fields {diff} differ): choose another --out")
            return
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, json.dumps(want, indent=1).encode())

    def preset(self) -> Preset:
        path = self.root / "preset.json"
        if not path.exists():
            raise ValueError(f"`out` {self.root} holds no sweep (no preset.json)")
        return Preset.from_dict(json.loads(path.read_text()))

    def is_done(self, setting: SizeSetting, seed: int) -> bool:
        rec = self.load_record(setting, seed)
        return rec is not None and rec.get("status") == "ok"

    def load_record(self, setting: SizeSetting, seed: int) -> dict | None:
        path = self.record_path(setting, seed)
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def save_record(self, setting: SizeSetting, seed: int, record: dict) -> None:
        _atomic_write(self.record_path(setting, seed), json.dumps(record, indent=1, default=_jsonable).encode())

    def save_weights(self, setting: SizeSetting, seed: int, weights: dict, info: dict) -> None:
        path = self.weights_path(setting, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **weights, info=np.array(json.dumps(info, default=_jsonable)))
        os.replace(tmp, path)

    def load_weights(self, setting: SizeSetting, seed: int) -> tuple[dict, dict] | None:
        path = self.weights_path(setting, seed)
        if not path.exists():
            return None
        try:
            with np.load(path) as f:
                return {k: f[k] for k in ("W1", "b1", "W2", "b2")}, json.loads(str(f["info"]))
        except (OSError, KeyError, ValueError, json.JSONDecodeError):
            return None

    def records(self) -> list[dict]:
        """Every record in the folder (ok and error), in a stable order."""
        out = []
        for path in sorted((self.root / "runs").glob("*/seed*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except json.JSONDecodeError:
                continue
        return out


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
