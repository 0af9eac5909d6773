"""Are these checkpoints mergeable? Same architecture, tensor names and shapes: ``python -m cmaam.check A B ...``."""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
from cmaam.merging.compatibility import check_compatibility


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.check", description=__doc__)
    parser.add_argument("models", nargs="+", help="two or more model (or peft LoRA adapter) folders")
    parser.add_argument("--allow-pickle", action="store_true", help="read .bin/.pt checkpoints (weights_only)")
    parser.add_argument("--adapter-base", default=None, help="base model of adapter folders (default: their config's)")
    parser.add_argument("--limit", type=int, default=50, help="rows shown per kind of difference (default: 50)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = check_compatibility(args.models, allow_pickle=args.allow_pickle, adapter_base=args.adapter_base)
    print(report.summary())
    if report.differences:
        print()
        print(report.table(limit=args.limit))
    return 0 if report.compatible else 1


if __name__ == "__main__":
    run_cli(main)
