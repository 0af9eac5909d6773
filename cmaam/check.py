"""Are these checkpoints mergeable? Same architecture, tensor names and shapes: ``python -m cmaam.check A B ...``."""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
from cmaam.core.options import READ, add_execution_options
from cmaam.merging.compatibility import check_compatibility


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.check", description=__doc__)
    parser.add_argument("models", nargs="+", help="two or more model folders")
    add_execution_options(parser, READ)
    parser.add_argument("--limit", type=int, default=50, help="rows shown per kind of difference (default: 50)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = check_compatibility(args.models, allow_pickle=args.allow_pickle)
    print(report.summary())
    if report.differences:
        print()
        print(report.table(limit=args.limit))
    return 0 if report.compatible else 1


if __name__ == "__main__":
    run_cli(main)
