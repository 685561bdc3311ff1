"""The command line: ``sospcheck check`` and ``sospcheck demo``."""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .check import check
from .io import InputError, load_data, load_params, save_direction
from .options import Budget, Tolerances

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sospcheck",
        description="Certify a local minimum or a second-order stationary point of a one-hidden-layer "
                    "ReLU-like network, or return a verified descent direction.",
    )
    parser.add_argument("--version", action="version", version=f"sospcheck {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="check one point (weights + data)")
    c.add_argument("--params", required=True, help=".npz with W1, b1, W2, b2 [, s_plus, s_minus]")
    c.add_argument("--data", required=True, help=".npz with X, Y (may be the same file as --params)")
    c.add_argument("--loss", required=True, choices=["squared", "logistic", "cross_entropy"])
    c.add_argument("--no-bias1", action="store_true", help="the network has no hidden bias (no b1 key)")
    c.add_argument("--no-bias2", action="store_true", help="the network has no output bias (no b2 key)")
    c.add_argument("--reduction", default="sum", choices=["sum", "mean"])
    c.add_argument("--weight-decay", type=float, default=0.0, metavar="LAM")
    c.add_argument("--snap", action="store_true", help="move near-boundary points onto their kinks first")
    c.add_argument("--snap-tol", type=float, default=1e-5, metavar="TOL")
    c.add_argument("--json", metavar="OUT.json", help="write the full report as JSON ('-' for stdout)")
    c.add_argument("--direction-out", metavar="DIR.npz", help="write the descent direction (W1, b1, W2, b2)")
    c.add_argument("--tolerances", metavar="JSON", help="override tolerances, e.g. '{\"gradient\": 1e-6}'")
    c.add_argument("--budget", metavar="JSON", help="override budgets, e.g. '{\"max_icqp\": 256}'")
    c.add_argument("--no-fragility", action="store_true", help="skip the 10x tolerance re-runs")
    c.add_argument("--quiet", action="store_true", help="print only the verdict")

    sub.add_parser("demo", help="run the embedded examples and print their reports")
    return parser


def _json_arg(text: str | None, name: str) -> dict | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{name} must be a JSON object: {exc}") from exc
    if not isinstance(value, dict):
        raise InputError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


def _run_check(args) -> int:
    net = load_params(args.params, args.no_bias1, args.no_bias2)
    X, Y = load_data(args.data)
    result = check(
        net, X, Y, loss=args.loss, reduction=args.reduction, weight_decay=args.weight_decay,
        tolerances=Tolerances.from_any(_json_arg(args.tolerances, "--tolerances")),
        budget=Budget.from_any(_json_arg(args.budget, "--budget")), snap=args.snap, snap_tol=args.snap_tol,
        fragility=not args.no_fragility,
    )
    if args.json == "-":
        print(result.to_json(indent=2))
    else:
        print(result.verdict.value if args.quiet else result.summary())
        if args.json:
            with open(args.json, "w") as f:
                f.write(result.to_json(indent=2))
    if args.direction_out:
        if result.descent is None:
            print(f"note: verdict is {result.verdict.value}; no direction written to {args.direction_out}",
                  file=sys.stderr)
        else:
            save_direction(args.direction_out, result.descent.direction)
    return 0


def _run_demo() -> int:
    from .demo import EXAMPLES
    from .smooth import smooth_view

    for ex in EXAMPLES:
        print("=" * 78)
        print(ex.title)
        print(ex.story)
        print("-" * 78)
        print(smooth_view(ex.net, ex.X, ex.Y).describe())
        result = check(ex.net, ex.X, ex.Y)
        print("sospcheck:")
        print("  " + result.summary().replace("\n", "\n  "))
        if result.verdict.value != ex.expected:
            print(f"UNEXPECTED: the embedded example expects {ex.expected}", file=sys.stderr)
            return 1
    print("=" * 78)
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return _run_demo()
        return _run_check(args)
    except (InputError, ValueError, TypeError) as exc:
        print(f"sospcheck: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"sospcheck: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
