"""The command line: ``sospcheck check``, ``sospcheck plot``, ``sospcheck schema`` and ``sospcheck demo``.

Human-readable output is rendered with ``rich`` on stdout; progress goes to stderr, only on a terminal;
``--quiet`` prints only the verdict and ``--json -`` only the JSON report. Exit status: 0 whenever the
check ran (whatever the verdict), 2 with one line ``sospcheck: error: ...`` on bad input.
"""

from __future__ import annotations

import argparse
import math
import json
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.rule import Rule
from rich.text import Text

from . import __version__
from .check import check
from .io import InputError, check_writable, clean_message, load_data, load_params, save_direction, save_params
from .nearby_mode import nearby_config
from .options import Budget, Tolerances
from .validation import validate_engine

__all__ = ["main", "build_parser", "ProgressDisplay"]


def _add_point_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    """What a check needs: the point, the data, the loss, and how to decide."""
    p.add_argument("--params", required=required, metavar="P",
                   help=".npz with W1, b1, W2, b2 [, s_plus, s_minus]; or a PyTorch state_dict/checkpoint "
                        "(.pt/.pth/.ckpt) or .safetensors of Linear -> ReLU -> Linear")
    p.add_argument("--data", required=required, metavar="D", help=".npz with X, Y (may be the same file as --params)")
    p.add_argument("--loss", required=required, choices=["squared", "logistic", "cross_entropy"])
    p.add_argument("--no-bias1", action="store_true", help="the network has no hidden bias (no b1 key)")
    p.add_argument("--no-bias2", action="store_true", help="the network has no output bias (no b2 key)")
    p.add_argument("--s-plus", type=float, metavar="S", help="activation slope for t > 0 when --params does not "
                   "store s_plus (default 1)")
    p.add_argument("--s-minus", type=float, metavar="S", help="activation slope for t <= 0 when --params does not "
                   "store s_minus (default 0: ReLU; 0.01: leaky ReLU)")
    p.add_argument("--reduction", default="sum", choices=["sum", "mean"])
    p.add_argument("--weight-decay", type=float, default=0.0, metavar="LAM")
    p.add_argument("--snap", action="store_true", help="move near-boundary points onto their kinks first")
    p.add_argument("--snap-tol", type=float, default=1e-5, metavar="TOL")
    p.add_argument("--tolerances", metavar="JSON", help="override tolerances, e.g. '{\"gradient\": 1e-6}'")
    p.add_argument("--budget", metavar="JSON", help="override budgets, e.g. '{\"max_icqp\": 256}'")
    p.add_argument("--no-fragility", action="store_true", help="skip the 10x tolerance re-runs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sospcheck",
        description="Certify a local minimum or a second-order stationary point of a one-hidden-layer "
                    "ReLU-like network, or return a verified descent direction.",
    )
    parser.add_argument("--version", action="version", version=f"sospcheck {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="check one point (weights + data)")
    _add_point_options(c)
    c.add_argument("--json", metavar="OUT.json", help="write the full report as JSON ('-' for stdout, nothing else)")
    c.add_argument("--direction-out", metavar="DIR.npz", help="write the descent direction (W1, b1, W2, b2) as an "
                   ".npz archive to exactly this path; with --nearby, the direction at z* (written only when the "
                   "verdict at z* is descent)")
    c.add_argument("--nearby", action="store_true",
                   help="also judge z*, the exact stationary point next to the weights (negligible neurons zeroed, "
                        "near-kink points held on their kinks, Newton on that stratum), with tolerances near rounding; "
                        "reports its verdict, its distance and R(z*) - R(z), or that none lies within --nearby-radius")
    c.add_argument("--nearby-radius", type=float, metavar="R",
                   help="with --nearby: the largest move to z*, relative to |z| (default 1e-3)")
    c.add_argument("--nearby-out", metavar="Z.npz", help="with --nearby: write z* as a params .npz (W1, b1, W2, b2, "
                   "s_plus, s_minus; for several hidden layers the state_dict keys 0.weight, 0.bias, 2.weight, ...; "
                   "readable by --params) to exactly this path, when z* was found")
    c.add_argument("--plot", metavar="OUT.png", help="also draw the plots of `sospcheck plot` (.png, .svg or .pdf)")
    c.add_argument("--device", metavar="DEV", help="run the passes over the data and the Hessian products with PyTorch "
                   "on DEV (cuda, cuda:N or cpu; needs the torch extra)")
    c.add_argument("--quiet", action="store_true", help="print only the verdict")

    p = sub.add_parser("plot", help="check one point and draw the loss along the direction, a 2-D slice and "
                                    "the boundary counts (needs matplotlib)")
    _add_point_options(p)
    p.add_argument("-o", "--out", required=True, metavar="OUT.png", help="output file: .png, .svg or .pdf")
    p.add_argument("--seed", type=int, default=0, help="seed of the random slice directions (default 0)")
    p.add_argument("--grid", type=int, default=41, metavar="N", help="points per side of the 2-D slice, 5 to 401 "
                   "(default 41)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")

    sub.add_parser("schema", help="print the JSON schema of the --json report")
    sub.add_parser("demo", help="run the embedded examples and print their reports")

    from .table1.cli import add_parser as add_experiment_parser
    add_experiment_parser(sub)
    return parser


class ProgressDisplay:
    """Progress bars on stderr (only when it is a terminal), one per phase.

    Call it as ``progress(phase, done, total)`` (``total=None``: unknown) from any long loop, or wrap a
    step without a count in ``with display.phase("name"):`` (a spinner with the elapsed time).
    The plots call it for their sweeps; :func:`sospcheck.check` is handed it as ``progress=`` (its
    phases, the ICQPs, the Hessian-vector products, the fragility re-runs).
    """

    def __init__(self, enabled: bool = True, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.enabled = enabled and self.console.is_terminal
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, transient=True,
                                 disable=not self.enabled)
        self.tasks: dict = {}

    def __enter__(self) -> "ProgressDisplay":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def __call__(self, phase: str, done: int, total: int | None = None) -> None:
        if phase not in self.tasks:
            self.tasks[phase] = self.progress.add_task(phase, total=total)
        self.progress.update(self.tasks[phase], completed=done, total=total)

    @contextmanager
    def phase(self, name: str):
        task = self.progress.add_task(name, total=None)
        try:
            yield
        finally:
            self.progress.update(task, total=1, completed=1)


def _json_arg(text: str | None, name: str) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # bad JSON, an integer too long, nesting too deep
        raise InputError(f"{name} must be a JSON object: {clean_message(exc)}") from exc
    if not isinstance(value, dict):
        raise InputError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


def _plot_target(path: str | None, option: str) -> None:
    """Fail before the check when a plot cannot be written."""
    if path is None:
        return
    from .plot import check_output_path, require_matplotlib

    check_output_path(path, option)
    require_matplotlib(option)
    check_writable(path, option)


def _output_targets(args) -> None:
    """Every file the command will write must be writable before any work, so that no check runs in vain."""
    if args.json not in (None, "-"):
        check_writable(args.json, "--json")
    if args.direction_out is not None:
        check_writable(args.direction_out, "--direction-out")
    for option, value in (("--nearby-radius", args.nearby_radius), ("--nearby-out", args.nearby_out)):
        if value is not None and not args.nearby:
            raise InputError(f"{option} needs --nearby")
    if args.nearby:
        nearby_config(True, args.nearby_radius)  # a bad --nearby-radius fails before any work
    if args.nearby_out is not None:
        check_writable(args.nearby_out, "--nearby-out")
    _plot_target(args.plot, "--plot")


def _check(args, display: ProgressDisplay):
    """Load, validate and run the check; returns ``(result, X, Y)``."""
    for option, value in (("--s-plus", args.s_plus), ("--s-minus", args.s_minus)):
        if value is not None and not math.isfinite(value):
            raise InputError(f"{option} must be a finite number, got {value!r}")
    device = getattr(args, "device", None)
    if device is not None:
        try:
            validate_engine("auto", "torch", device)
        except (TypeError, ValueError) as exc:
            raise InputError(f"--device: {exc}") from exc
    with display.phase("reading --params"):
        net = load_params(args.params, args.no_bias1, args.no_bias2, s_plus=args.s_plus, s_minus=args.s_minus)
    with display.phase("reading --data"):
        X, Y = load_data(args.data)
    kw = dict(loss=args.loss, reduction=args.reduction, weight_decay=args.weight_decay,
              tolerances=Tolerances.from_any(_json_arg(args.tolerances, "--tolerances")),
              budget=Budget.from_any(_json_arg(args.budget, "--budget")), snap=args.snap, snap_tol=args.snap_tol,
              fragility=not args.no_fragility)
    if getattr(args, "nearby", False):
        kw.update(nearby=True, nearby_radius=args.nearby_radius)
    if device is not None:
        kw.update(device=device)
    if getattr(net, "depth", 1) > 1:  # several hidden layers: sospcheck.deep (DESIGN.md section 10)
        from .deep import check_deep

        if kw.pop("snap") or getattr(args, "plot", None) or args.command == "plot":
            raise InputError("--snap and plots are not available for networks with several hidden layers")
        kw.pop("snap_tol")
        return check_deep(net, X, Y, progress=display, **kw), X, Y
    result = check(net, X, Y, progress=display, backend="numpy" if device is None else "torch", **kw)
    return result, X, Y


def _plot(result, X, Y, path: str, display: ProgressDisplay, seed: int = 0, grid: int = 41) -> None:
    from .plot import plot_result

    plot_result(result, result.problem(X, Y), path, seed=seed, grid=grid, progress=display)


def _run_check(args) -> int:
    to_stdout = args.json == "-"
    _output_targets(args)
    show_progress = not (args.quiet or to_stdout)
    with ProgressDisplay(enabled=show_progress) as display:
        result, X, Y = _check(args, display)
    if to_stdout:
        print(result.to_json(indent=2))
    elif args.quiet:
        print(result.verdict.value if result.nearby is None else
              f"{result.verdict.value}; nearby: {result.nearby.verdict.value if result.nearby.success else 'none'}")
    else:
        from .report import render

        Console().print(render(result))
    if args.json and not to_stdout:
        with open(args.json, "w") as f:
            f.write(result.to_json(indent=2))
    if args.direction_out:
        _write_direction(result, args.direction_out)
    if args.nearby_out:
        nb = result.nearby
        if nb.success:
            save_params(args.nearby_out, nb.net)
        else:
            print(f"note: no stationary point within --nearby-radius ({nb.status}); nothing written to "
                  f"{args.nearby_out}", file=sys.stderr)
    if args.plot:
        with ProgressDisplay(enabled=show_progress) as display:
            _plot(result, X, Y, args.plot, display)
    return 0


def _write_direction(result, path: str) -> None:
    """The descent direction at the checked point, or with --nearby at z*; a note when there is none."""
    nb = result.nearby
    if nb is not None:
        if nb.success and nb.result.descent is not None:
            save_direction(path, nb.result.descent.direction)
        else:
            what = f"the verdict at z* is {nb.verdict.value}" if nb.success else "no z* was found"
            print(f"note: with --nearby the direction is the one at z*; {what}: no direction written to {path}",
                  file=sys.stderr)
    elif result.descent is None:
        print(f"note: verdict is {result.verdict.value}; no direction written to {path}", file=sys.stderr)
    else:
        save_direction(path, result.descent.direction)


def _run_plot(args) -> int:
    from .plot import check_grid

    check_grid(args.grid, "--grid")
    _plot_target(args.out, "--out")
    with ProgressDisplay(enabled=not args.quiet) as display:
        result, X, Y = _check(args, display)
        _plot(result, X, Y, args.out, display, seed=args.seed, grid=args.grid)
    if not args.quiet:
        print(f"verdict: {result.verdict.value}; wrote {args.out}")
    return 0


def _run_schema() -> int:
    from .report import REPORT_SCHEMA

    print(json.dumps(REPORT_SCHEMA, indent=2))
    return 0


def _run_demo() -> int:
    from .demo import EXAMPLES
    from .report import render
    from .smooth import smooth_view

    console = Console()
    for ex in EXAMPLES:
        console.print(Rule(Text(ex.title, style="bold"), align="left"))
        console.print(Text(ex.story))
        console.print(Text(smooth_view(ex.net, ex.X, ex.Y).describe(), style="italic"))
        result = check(ex.net, ex.X, ex.Y)
        console.print(render(result))
        if result.verdict.value != ex.expected:
            print(f"UNEXPECTED: the embedded example expects {ex.expected}", file=sys.stderr)
            return 1
    console.print(Rule())
    return 0


def _one_line(exc: BaseException) -> str:
    return clean_message(exc, limit=None) or type(exc).__name__


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return _run_demo()
        if args.command == "schema":
            return _run_schema()
        if args.command == "plot":
            return _run_plot(args)
        if args.command == "experiment":
            from .table1.cli import run as run_experiment
            return run_experiment(args)
        return _run_check(args)
    except (InputError, ValueError, TypeError, OSError, ImportError) as exc:
        print(f"sospcheck: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # sizes are checked against MAX_ELEMENTS first; this is the last resort
        print(f"sospcheck: error: not enough memory ({_one_line(exc)})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
