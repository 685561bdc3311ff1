"""Plain JSON values from the result's NumPy numbers and enums (the JSON report, docs/cli.md)."""

from __future__ import annotations

from enum import Enum

import numpy as np

__all__ = ["jsonable", "finite_or_none"]


def finite_or_none(x: float) -> float | None:
    """``x``, or None (JSON null) when it is not finite."""
    return x if np.isfinite(x) else None


def jsonable(obj):
    """``obj`` with NumPy arrays, scalars and enums turned into plain JSON values; non-finite floats become None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return finite_or_none(float(obj))
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Enum):
        return obj.value
    return obj
