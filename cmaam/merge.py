"""``python -m cmaam.merge``: alignment-aware VLM merge: one analysis pass, adaptive alphas, one merge pass."""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.alignment.alphas import (
    STRATEGIES,
    AlphaConfig,
    parse_score_weights,
)
from cmaam.alignment.merge import INTERPOLATIONS, merge_vlm
from cmaam.core.cli import run_cli


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by merge and sweep: source/target, output dtype, device, safety switches."""
    parser.add_argument("--source", required=True, help="model (or peft LoRA adapter) folder holding the knowledge to inject (S)")
    parser.add_argument("--target", required=True, help="model folder whose architecture, config and tokenizer are kept (T)")
    parser.add_argument("--interp", default="linear", choices=INTERPOLATIONS, help="linear or slerp (t = alpha)")
    parser.add_argument("--dtype", default=None, help="output dtype (bfloat16, float16, float32); default: as stored")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--allow-pickle", action="store_true", help="accept pickled .bin checkpoints")
    parser.add_argument("--allow-nonfinite", action="store_true", help="merge even if NaN/Inf appear")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--map", default="auto", help="auto (pairs from the two layouts: a text LLM onto a VLM's "
                        "language model, LLaVA-OneVision onto Qwen2-VL) or a YAML mapping file")
    parser.add_argument("--adapter-base", default=None,
                        help="base model of peft LoRA adapter inputs (default: adapter_config.json's)")


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
    merge_vlm(args.source, args.target, args.output, alphas, interp=args.interp, model_type=args.model_type,
              rules_file=args.rules_file, analyze=args.analyze, alphas_only=args.alphas_only, dtype=args.dtype,
              device=args.device, overwrite=args.overwrite, allow_pickle=args.allow_pickle,
              allow_nonfinite=args.allow_nonfinite, max_shard_size=args.max_shard_size,
              progress=not args.no_progress, adapter_base=args.adapter_base, map_spec=args.map)
    return 0


if __name__ == "__main__":
    run_cli(main)
