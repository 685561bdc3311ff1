"""``sospcheck experiment ...``: the Table 1 sweep, its report, the list of presets.

Wiring into the main CLI: ``add_parser(subparsers)`` adds the ``experiment`` command and
``run(args)`` executes it (exit 0 when the sweep ran, whatever the verdicts; 1 when runs failed;
2 on bad arguments). Stand-alone: ``python -m sospcheck.table1 table1 --preset quick``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .presets import PRESETS, get_preset, parse_settings

__all__ = ["add_parser", "run", "main", "build_parser"]

DEFAULT_OUT = "experiments/table1"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``experiment`` (with ``table1``, ``report``, ``presets``) to a main parser's subparsers."""
    e = subparsers.add_parser("experiment", help="reproduce and extend the paper's experiment (Table 1)",
                              description="Reproduce the paper's Table 1 and its extensions; sweeps run on Dask.")
    sub = e.add_subparsers(dest="experiment_command", required=True)
    t = sub.add_parser("table1", help="train, count and check every (setting, seed) of a preset, then report")
    t.add_argument("--preset", required=True, choices=sorted(PRESETS), help="see `experiment presets`")
    t.add_argument("--out", metavar="DIR", help=f"results folder (default {DEFAULT_OUT}/PRESET); reruns resume")
    t.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="an existing Dask scheduler (default: a LocalCluster)")
    t.add_argument("--workers", type=int, default=2, help="LocalCluster workers (default 2)")
    t.add_argument("--threads-per-worker", type=int, default=1)
    t.add_argument("--threads", dest="processes", action="store_false",
                   help="LocalCluster workers as threads of this process instead of processes")
    t.add_argument("--device", default="auto", help="training device: auto (GPU when present), cpu, cuda")
    t.add_argument("--group-size", type=int, help="seeds trained together (default: all on a GPU, 1 on a CPU)")
    t.add_argument("--no-cuda-graph", dest="cuda_graph", action="store_false", help="train without CUDA graphs")
    t.add_argument("--seeds", metavar="N|A-B|a,b", help="which seeds (default: the preset's 0..n-1)")
    t.add_argument("--settings", metavar="dx,dh,m;...", help="a subset of the preset's settings")
    t.add_argument("--relaxed-tol", type=float, default=1e-5, metavar="TOL",
                   help="also check with this relative gradient tolerance (0: skip; default 1e-5)")
    t.add_argument("--task-timeout", type=float, default=600, metavar="SEC",
                   help="record a run still checking after SEC seconds on a worker as an error (default 600; 0: none)")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    t.add_argument("--report-only", action="store_true", help="only aggregate what --out already holds")
    t.add_argument("--recheck", action="store_true",
                   help="check every saved run again from its weights (no training), replacing its record")
    r = sub.add_parser("report", help="aggregate a results folder again (table1.md, .csv, .png)")
    r.add_argument("--out", required=True, metavar="DIR")
    sub.add_parser("presets", help="list the presets")
    e.set_defaults(func=run)
    return e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sospcheck.table1")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    return parser


def run(args) -> int:
    """Execute a parsed ``experiment`` command; the exit status."""
    from ..io import check_writable_folder
    from .aggregate import write_report
    from .store import Store

    try:
        if args.experiment_command == "presets":
            for name, p in PRESETS.items():
                print(f"{name:16s} {len(p.settings)} setting(s) x {p.n_seeds} seeds, {p.iters:,} steps: "
                      f"{p.description}")
            return 0
        if args.experiment_command == "report":
            rep = write_report(Store(args.out))
            print(rep["markdown"])
            print("wrote " + ", ".join(rep["files"]), file=sys.stderr)
            return 0
        preset = get_preset(args.preset)
        out = Path(args.out or Path(DEFAULT_OUT) / preset.name)
        check_writable_folder(str(out), "--out")
        summary = None
        if not args.report_only:
            from .sweep import parse_seeds, run_sweep

            settings = parse_settings(args.settings) if args.settings else None
            summary = run_sweep(
                preset, out, seeds=parse_seeds(args.seeds, preset.n_seeds), settings=settings,
                scheduler=args.scheduler, workers=args.workers, threads_per_worker=args.threads_per_worker,
                processes=args.processes, device=args.device, group_size=args.group_size,
                cuda_graph=args.cuda_graph, relaxed_gradient_tol=args.relaxed_tol or None, progress=args.progress,
                task_timeout=args.task_timeout or None, recheck=args.recheck,
                log=lambda msg: print(msg, file=sys.stderr, flush=True))
        rep = write_report(Store(out), preset)
        print(rep["markdown"])
        print("wrote " + ", ".join(rep["files"]), file=sys.stderr)
        return 1 if summary is not None and summary.failed else 0
    except (ValueError, RuntimeError) as exc:
        print(f"sospcheck experiment: error: {exc}", file=sys.stderr)
        return 2


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
