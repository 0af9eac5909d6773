"""python -m eval.mgsm --model PATH --lang ja [--data TSV] [--limit N] [--shots K] [--no-cot] --output-dir D"""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
from eval.mgsm.prompts import MAX_SHOTS
from eval.mgsm.run import run_mgsm
from eval.options import add_generator_options, add_run_options, generator_options, run_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.mgsm", description="Evaluate a model on MGSM.")
    parser.add_argument("--lang", required=True, help="ko | ja | zh | en")
    parser.add_argument("--data", default=None, help="TSV (question<TAB>answer) or datasets folder "
                                                     "(default: bundled MGSM for en, ja, zh)")
    parser.add_argument("--limit", type=int, default=None, help="first N items only")
    parser.add_argument("--shots", type=int, default=0, help=f"few-shot exemplars, 0-{MAX_SHOTS}")
    parser.add_argument("--no-cot", action="store_true", help="ask for the answer directly (no chain of thought)")
    parser.add_argument("--language-threshold", type=float, default=0.5,
                        help="share of letters in the language's script for the language check")
    add_generator_options(parser, max_new_tokens=512)
    add_run_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder, result = run_mgsm(args.model, args.lang, data=args.data, limit=args.limit, shots=args.shots,
                              chain_of_thought=not args.no_cot, language_check_threshold=args.language_threshold,
                              generator_options=generator_options(args), **run_options(args))
    metrics = result.metrics
    print(f"MGSM {args.lang}: accuracy {metrics['accuracy']:.4f}, with language check "
          f"{metrics['accuracy_with_language_check']:.4f} ({metrics['count']} items) -> {folder}")
    return 0


if __name__ == "__main__":
    run_cli(main)
