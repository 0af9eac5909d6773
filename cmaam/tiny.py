"""Tiny random models built from transformers configs: the built-in default for demos, tests and benches."""

from __future__ import annotations

from cmaam.testing.tiny import (
    CAUSAL_LM_TYPES,
    VLM_TYPES,
    TinySize,
    build_tiny_causal_lm,
    build_tiny_vlm,
)


def main(argv=None) -> int:
    """``python -m cmaam.tiny --output DIR [--model-type qwen2_vl] [--seed 0] [--hidden-size 64] ...``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cmaam.tiny",
                                     description="Build a tiny random model from a config.")
    parser.add_argument("--output", required=True)
    parser.add_argument("--model-type", default="qwen2_vl", choices=CAUSAL_LM_TYPES + VLM_TYPES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--intermediate-size", type=int, default=None, help="default: 2 x hidden size")
    parser.add_argument("--num-hidden-layers", type=int, default=2)
    parser.add_argument("--num-attention-heads", type=int, default=4)
    parser.add_argument("--num-key-value-heads", type=int, default=2)
    parser.add_argument("--vision-hidden-size", type=int, default=32)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    from cmaam.io.atomic import atomic_directory

    size = TinySize(hidden_size=args.hidden_size, intermediate_size=args.intermediate_size or 2 * args.hidden_size,
                    num_hidden_layers=args.num_hidden_layers, num_attention_heads=args.num_attention_heads,
                    num_key_value_heads=args.num_key_value_heads, vision_hidden_size=args.vision_hidden_size,
                    vision_layers=args.vision_layers)
    size.validate()
    with atomic_directory(args.output, overwrite=args.overwrite, inputs=()) as folder:
        if args.model_type in CAUSAL_LM_TYPES:
            build_tiny_causal_lm(folder, args.model_type, args.seed, size)
        else:
            build_tiny_vlm(folder, args.model_type, args.seed, size)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    from cmaam.core.cli import run_cli

    run_cli(main)
