"""The paper's experiment (Yun, Sra & Jadbabaie 2019, Table 1), reproduced and extended.

Modules, one job each: ``presets`` (settings, schedules, the paper's numbers), ``training``
(data, init, batched full-batch Adam in PyTorch), ``estimates`` (the paper's threshold counts),
``record`` (one run: train, estimate, check), ``store`` (per-run files, resume), ``sweep`` (Dask),
``aggregate`` (tables, CSV, plot), ``cli``. Needs the optional extras: PyTorch and Dask.
"""

from .presets import PAPER_SETTINGS, PAPER_TABLE1, PRESETS, Preset, Setting, get_preset

__all__ = ["PAPER_SETTINGS", "PAPER_TABLE1", "PRESETS", "Preset", "Setting", "get_preset"]
