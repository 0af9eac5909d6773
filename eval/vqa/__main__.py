"""python -m eval.vqa --model PATH --data test.jsonl --output-dir D [--limit N] [--run-name R] [--text-only]"""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
from eval.options import add_generator_options, add_run_options, generator_options, run_options
from eval.vqa.run import run_vqa


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m eval.vqa", description="Evaluate a VLM on a VQA JSONL file.")
    parser.add_argument("--data", required=True, help="JSONL: {id, image, question, answer, answers?, category, lang}")
    parser.add_argument("--limit", type=int, default=None, help="first N questions only")
    parser.add_argument("--text-only", action="store_true",
                        help="ask every question without its image (needed to give image questions to a "
                             "text-only model)")
    add_generator_options(parser, max_new_tokens=32)
    add_run_options(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    folder, result = run_vqa(args.model, args.data, limit=args.limit, generator_options=generator_options(args),
                             text_only=args.text_only, **run_options(args))
    metrics = result.metrics
    dropped = f", text only: {metrics['images_dropped']} images not shown" if args.text_only else ""
    print(f"VQA: exact match {metrics['exact_match']:.4f}, VQA accuracy {metrics['vqa_accuracy']:.4f}, "
          f"relaxed {metrics['relaxed_accuracy']:.4f}, ANLS {metrics['anls']:.4f} "
          f"({metrics['count']} questions{dropped}) -> {folder}")
    return 0


if __name__ == "__main__":
    run_cli(main)
