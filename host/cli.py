"""The ``echoboard`` command line: a thin layer over the library (each subcommand lives in its module)."""
from __future__ import annotations

import argparse
import sys


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from golden_model import report
    from host import train

    parser = argparse.ArgumentParser(prog="echoboard", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    report.add_check_gradients_arguments(sub.add_parser(
        "check-gradients", help="RHEL (float and fixed point) against float64 BPTT, per parameter"))
    report.add_sweep_arguments(sub.add_parser(
        "sweep-formats", help="fixed-point format sweep (widths x epsilon x loss scale), writes a table"))
    train.add_train_arguments(sub.add_parser(
        "train", help="train the on-board model (HRU -> mean pool -> linear head) on a real data set"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ValueError as exc:  # bad input: a clear message, no traceback
        print(f"echoboard {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
