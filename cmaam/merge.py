"""``python -m cmaam.merge``: alignment-aware VLM merge: one analysis pass, adaptive alphas, one merge pass."""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.alignment.alphas import (
    STRATEGIES,
    AlphaConfig,
    parse_score_weights,
)
from cmaam.alignment.merge import merge_vlm
from cmaam.merging.pairs import INTERPOLATIONS
from cmaam.core.cli import run_cli
from cmaam.core.options import MERGE, ExecutionOptions, add_execution_options


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by merge and sweep: source/target, interpolation, and the execution options."""
    parser.add_argument("--source", required=True,
                        help="model (or peft LoRA adapter) folder holding the knowledge to inject (S)")
    parser.add_argument("--target", required=True,
                        help="model folder whose architecture, config and tokenizer are kept (T)")
    parser.add_argument("--interp", default="linear", choices=INTERPOLATIONS, help="linear or slerp (t = alpha)")
    parser.add_argument("--map", default="auto", metavar="auto|FILE.yaml",
                        help="pairs of models of different types: auto (from the two layouts: a text LLM onto a "
                             "VLM's language model, LLaVA-OneVision onto Qwen2-VL) or a YAML mapping file")
    add_execution_options(parser, MERGE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.merge", description=__doc__.split(":", 1)[1].strip())
    add_common_arguments(parser)
    parser.add_argument("--output", required=True, help="output model folder (or analysis folder with --alphas-only)")
    parser.add_argument("--strategy", default="basic", choices=STRATEGIES, help="how tensors are grouped")
    parser.add_argument("--base-alpha", type=float, default=0.5, help="alpha before scaling by A_g (1 - v_g)")
    parser.add_argument("--alpha-min", type=float, default=0.0)
    parser.add_argument("--alpha-max", type=float, default=1.0)
    parser.add_argument("--model-type", default=None, help="layout to use (default: config.json's model_type)")
    parser.add_argument("--rules-file", default=None, help="YAML component rules for a new architecture")
    parser.add_argument("--preserve-mean", action="store_true", help="rescale so the mean alpha is --base-alpha")
    parser.add_argument("--score-weights", default=None, help="e.g. pda=0.4,gfs=0.3,cmbc=0.3 (all 0: A = 1)")
    parser.add_argument("--no-sensitivity", action="store_true", help="ablation: v_g = 0")
    parser.add_argument("--analyze", action="store_true", help="also write OUTPUT/analysis/ (report + heatmaps)")
    parser.add_argument("--alphas-only", action="store_true", help="write only the analysis and alphas to OUTPUT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    alphas = AlphaConfig(strategy=args.strategy, base_alpha=args.base_alpha, alpha_min=args.alpha_min,
                         alpha_max=args.alpha_max, score_weights=parse_score_weights(args.score_weights),
                         preserve_mean=args.preserve_mean, use_sensitivity=not args.no_sensitivity)
    merge_vlm(args.source, args.target, args.output, alphas, ExecutionOptions.from_args(args), interp=args.interp,
              model_type=args.model_type, rules_file=args.rules_file, analyze=args.analyze,
              alphas_only=args.alphas_only, map_spec=args.map)
    return 0


if __name__ == "__main__":
    run_cli(main)
