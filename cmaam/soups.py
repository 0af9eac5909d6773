"""Model soups (Wortsman et al. 2022, arXiv:2203.05482): uniform and greedy weight averaging of"""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
from cmaam.core.options import MERGE, ExecutionOptions, add_execution_options
from cmaam.merging.soups import uniform_soup


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.soups",
                                     description="Uniform model soup (equal-weight average).")
    parser.add_argument("output", help="output model folder")
    parser.add_argument("models", nargs="+",
                        help="model or peft LoRA adapter folders (same architecture); the first gives config and "
                             "tokenizer")
    add_execution_options(parser, MERGE)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cmaam.soups OUT MODEL [MODEL ...]``: write the uniform soup of the models."""
    args = build_parser().parse_args(argv)
    output = uniform_soup(args.models, args.output, ExecutionOptions.from_args(args))
    print(f"wrote the uniform soup of {len(args.models)} models to {output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
