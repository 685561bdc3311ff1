"""Regenerate the pictures in docs/img from the embedded examples (``sospcheck demo``).

    .venv/bin/python docs/make_images.py [OUT_DIR]      # default: docs/img next to this file

- ``descent.png``: ``sospcheck plot`` on example (c), a second-order saddle hidden in the kinks;
- ``local-minimum.png``: ``sospcheck plot`` on example (b), a certified minimum at a kink;
- ``check-output.svg``: what ``sospcheck check`` prints for example (c), recorded from the terminal renderer.

The plots are made by the real command line (``sospcheck plot --params ... -o ...``) on ``.npz`` files written
from the examples; tests/test_plot.py runs this script into a temporary folder.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

from sospcheck import check
from sospcheck.cli import main
from sospcheck.demo import EXAMPLES
from sospcheck.report import render


def write_example(ex, path: Path) -> str:
    """One ``.npz`` holding the example's weights and data (for ``--params`` and ``--data``)."""
    np.savez(path, W1=ex.net.W1, b1=ex.net.b1, W2=ex.net.W2, b2=ex.net.b2, X=ex.X, Y=ex.Y)
    return str(path)


def make(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        for ex, name in ((EXAMPLES[2], "descent"), (EXAMPLES[1], "local-minimum")):
            f = write_example(ex, Path(tmp) / f"{name}.npz")
            target = out_dir / f"{name}.png"
            if main(["plot", "--params", f, "--data", f, "--loss", "squared", "-o", str(target), "--quiet"]) != 0:
                raise SystemExit(f"sospcheck plot failed for {name}")
            written.append(target)
    ex = EXAMPLES[2]
    result = check(ex.net, ex.X, ex.Y)
    console = Console(record=True, width=84, file=io.StringIO())
    console.print("$ sospcheck check --params saddle.npz --data saddle.npz --loss squared", style="bold")
    console.print(render(result))
    target = out_dir / "check-output.svg"
    console.save_svg(str(target), title="sospcheck check")
    written.append(target)
    return written


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    for p in make(Path(sys.argv[1]) if len(sys.argv) > 1 else here / "img"):
        print(f"wrote {p}")
