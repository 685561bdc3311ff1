"""``python -m sospcheck.table1 table1 --preset quick`` (the same as ``sospcheck experiment ...``)."""

import sys

from .cli import build_parser


def _main() -> int:
    argv = sys.argv[1:]
    args = build_parser().parse_args(["experiment", *argv])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(_main())
