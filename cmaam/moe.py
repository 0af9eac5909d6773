"""Build a Mixture-of-Experts model from a mergekit-moe YAML, streaming: ``python -m cmaam.moe CONFIG.yaml OUT``."""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
from cmaam.core.options import ExecutionOptions, add_execution_options
from cmaam.merging.moe import build_moe


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.moe", description=__doc__)
    parser.add_argument("config", help="mergekit-moe YAML config (base_model, experts, gate_mode, ...)")
    parser.add_argument("output", help="output model folder (written atomically)")
    parser.add_argument("--allow-identical-experts", action="store_true",
                        help="accept experts that are all the same model (useful only if you train the MoE after)")
    add_execution_options(
        parser, ("device", "dtype", "max_shard_size", "overwrite", "allow_pickle", "seed", "progress"),
        help={"device": "where the hidden gate modes run the base model: auto (cuda when available), cpu, cuda or "
                        "cuda:N (default: auto)",
              "dtype": "bfloat16, float16 or float32 for the written tensors (default: the config's dtype, else "
                       "the base model's)",
              "seed": "seed of the random gate modes and of experts' noise_scale (default: 0)"})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = build_moe(args.config, args.output, ExecutionOptions.from_args(args),
                       allow_identical_experts=args.allow_identical_experts)
    print(f"MoE model written to {output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
