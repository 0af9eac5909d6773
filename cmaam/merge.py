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
    adapt = parser.add_argument_group("adaptive coefficients from unlabeled inputs (start: the CMAAM alphas)")
    adapt.add_argument("--adapt", choices=("adamerging", "adamms"), default=None,
                       help="adamerging: learn one alpha per group by entropy minimisation; adamms: rescale the "
                            "alphas along a grid of mean alphas and pick the point where answers change least")
    adapt.add_argument("--adapt-data", default=None, metavar="FILE",
                       help="unlabeled inputs: a VQA JSONL (answers ignored), a JSONL of {prompt}, or a .txt")
    adapt.add_argument("--adapt-held-out", default=None, metavar="FILE",
                       help="AdaMerging: inputs never trained on, whose entropy before/after is reported")
    adapt.add_argument("--adapt-limit", type=int, default=None, help="use the first N inputs of each file")
    adapt.add_argument("--adapt-init", type=float, default=None,
                       help="AdaMerging: start every group at this alpha (default: the CMAAM alphas)")
    adapt.add_argument("--adapt-steps", type=int, default=100, help="AdaMerging: optimizer steps (default 100)")
    adapt.add_argument("--adapt-lr", type=float, default=1e-3, help="AdaMerging: Adam learning rate (default 1e-3)")
    adapt.add_argument("--adapt-batch-size", type=int, default=16, help="inputs per step / per generation batch")
    adapt.add_argument("--adapt-answer-tokens", type=int, default=1,
                       help="AdaMerging: entropy over the first N tokens of the greedy answer (default 1)")
    adapt.add_argument("--adapt-grid", default=None, metavar="A,B,...",
                       help="AdaMMS: mean alphas to try (default 0,0.1,...,1)")
    adapt.add_argument("--adapt-max-new-tokens", type=int, default=16, help="AdaMMS: answer length")
    add_execution_options(parser, ("seed", "trust_remote_code"),
                          help={"seed": "AdaMerging: seed of the batch order (default: 0)",
                                "trust_remote_code": "--adapt: run the model folder's own Python code to load it"})
    return parser


def adapt_options(args: argparse.Namespace):
    """The AdaptOptions of the --adapt flags (None without --adapt); --adapt-* without --adapt is an error."""
    from cmaam.core.errors import CMAAMError

    given = [name for name in ("adapt_data", "adapt_held_out", "adapt_init", "adapt_grid", "adapt_limit")
             if getattr(args, name) is not None]
    if args.adapt is None:
        if given:
            raise CMAAMError(f"--{given[0].replace('_', '-')} needs --adapt adamerging|adamms")
        return None
    if args.adapt_data is None:
        raise CMAAMError(f"--adapt {args.adapt} needs --adapt-data FILE (unlabeled inputs)")
    from cmaam.search.adapt import AdaptOptions
    from cmaam.search.adamms import DEFAULT_GRID
    from cmaam.merging.sweep import parse_alphas

    try:
        grid = tuple(parse_alphas(args.adapt_grid)) if args.adapt_grid else DEFAULT_GRID
    except CMAAMError as error:
        raise CMAAMError(str(error).replace("--alphas", "--adapt-grid", 1)) from None
    return AdaptOptions(method=args.adapt, data=args.adapt_data, held_out=args.adapt_held_out, limit=args.adapt_limit,
                        init=args.adapt_init, steps=args.adapt_steps, lr=args.adapt_lr,
                        batch_size=args.adapt_batch_size, answer_tokens=args.adapt_answer_tokens,
                        grid=grid, max_new_tokens=args.adapt_max_new_tokens)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    alphas = AlphaConfig(strategy=args.strategy, base_alpha=args.base_alpha, alpha_min=args.alpha_min,
                         alpha_max=args.alpha_max, score_weights=parse_score_weights(args.score_weights),
                         preserve_mean=args.preserve_mean, use_sensitivity=not args.no_sensitivity)
    execution = ExecutionOptions.from_args(args)
    settings = adapt_options(args)
    adapter = None
    if settings is not None:
        from cmaam.search.adapt import make_adapter

        adapter = make_adapter(settings, execution)
    merge_vlm(args.source, args.target, args.output, alphas, execution, interp=args.interp,
              model_type=args.model_type, rules_file=args.rules_file, analyze=args.analyze,
              alphas_only=args.alphas_only, map_spec=args.map, adapt=adapter)
    return 0


if __name__ == "__main__":
    run_cli(main)
