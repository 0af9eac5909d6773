"""Tiny random models built from transformers configs: the built-in default for demos, tests and benches."""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.options import ExecutionOptions, add_execution_options
from cmaam.testing.tiny import CAUSAL_LM_TYPES, VLM_TYPES, TinySize, write_tiny_model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.tiny",
                                     description="Build a tiny random model from a config.")
    parser.add_argument("--output", required=True)
    parser.add_argument("--model-type", default="qwen2_vl", choices=CAUSAL_LM_TYPES + VLM_TYPES)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--intermediate-size", type=int, default=None, help="default: 2 x hidden size")
    parser.add_argument("--num-hidden-layers", type=int, default=2)
    parser.add_argument("--num-attention-heads", type=int, default=4)
    parser.add_argument("--num-key-value-heads", type=int, default=2)
    parser.add_argument("--vision-hidden-size", type=int, default=32)
    parser.add_argument("--vision-layers", type=int, default=2)
    add_execution_options(parser, ("seed", "overwrite"),
                          help={"seed": "seed of the random weights (default: 0)"})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cmaam.tiny --output DIR [--model-type qwen2_vl] [--seed 0] [--hidden-size 64] ...``."""
    args = build_parser().parse_args(argv)
    options = ExecutionOptions.from_args(args)
    size = TinySize(hidden_size=args.hidden_size, intermediate_size=args.intermediate_size or 2 * args.hidden_size,
                    num_hidden_layers=args.num_hidden_layers, num_attention_heads=args.num_attention_heads,
                    num_key_value_heads=args.num_key_value_heads, vision_hidden_size=args.vision_hidden_size,
                    vision_layers=args.vision_layers)
    write_tiny_model(args.output, args.model_type, options.seed, size, overwrite=options.overwrite)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    from cmaam.core.cli import run_cli

    run_cli(main)
