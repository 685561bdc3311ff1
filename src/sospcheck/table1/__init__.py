"""The paper's experiment (Yun, Sra & Jadbabaie 2019, Table 1), reproduced and extended.

The command line is ``sospcheck experiment ...``; results go to ``experiments/table1/PRESET`` (the
top-level ``experiments/`` folder holds scripts and results, this package the code).

Modules, one job each: ``presets`` (sizes, schedules, the paper's numbers), ``training``
(data, init, batched full-batch Adam in PyTorch), ``estimates`` (the paper's threshold counts),
``record`` (one run: train, estimate, check), ``store`` (per-run files, resume), ``sweep`` (Dask),
``aggregate`` (tables, CSV, plot), ``cli``. Needs the optional extras: PyTorch and Dask.
"""

from .presets import PAPER_SETTINGS, PAPER_TABLE1, PRESETS, Preset, SizeSetting, get_preset

__all__ = ["PAPER_SETTINGS", "PAPER_TABLE1", "PRESETS", "Preset", "SizeSetting", "get_preset"]
