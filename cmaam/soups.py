"""Model soups (Wortsman et al. 2022, arXiv:2203.05482): uniform and greedy weight averaging of"""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
from cmaam.merging.soups import SoupOptions, uniform_soup


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cmaam.soups OUT MODEL [MODEL ...]``: write the uniform soup of the models."""
    parser = argparse.ArgumentParser(prog="python -m cmaam.soups", description="Uniform model soup (equal-weight average).")
    parser.add_argument("output", help="output model folder")
    parser.add_argument("models", nargs="+", help="model or peft LoRA adapter folders (same architecture); "
                                                  "the first gives config and tokenizer")
    parser.add_argument("--dtype", default=None, help="output dtype: bfloat16, float16 or float32 (default: as stored)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--max-shard-size", default="5GB")
    parser.add_argument("--allow-pickle", action="store_true", help="read .bin checkpoints (torch.load weights_only)")
    parser.add_argument("--allow-nonfinite", action="store_true", help="merge even if a tensor holds NaN/Inf")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--adapter-base", default=None,
                        help="base model of peft LoRA adapter ingredients (default: adapter_config.json's)")
    args = parser.parse_args(argv)
    options = SoupOptions(dtype=args.dtype, device=args.device, allow_pickle=args.allow_pickle,
                          allow_nonfinite=args.allow_nonfinite, max_shard_size=args.max_shard_size,
                          adapter_base=args.adapter_base)
    output = uniform_soup(args.models, args.output, options, overwrite=args.overwrite)
    print(f"wrote the uniform soup of {len(args.models)} models to {output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
