"""Build a Mixture-of-Experts model from a mergekit-moe YAML, streaming: ``python -m cmaam.moe CONFIG.yaml OUT``."""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
from cmaam.core.errors import CMAAMError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.moe", description=__doc__)
    parser.add_argument("config", help="mergekit-moe YAML config (base_model, experts, gate_mode, ...)")
    parser.add_argument("output", help="output model folder (written atomically)")
    parser.add_argument("--device", default="cpu",
                        help="where the hidden gate mode runs the base model: cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random gate modes and of experts' noise_scale (default: 0)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard (default: 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read .bin/.pt checkpoints (torch.load with weights_only=True)")
    parser.add_argument("--allow-identical-experts", action="store_true",
                        help="accept experts that are all the same model (useful only if you train the MoE after)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seed < 0:
        raise CMAAMError(f"--seed must be >= 0, got {args.seed}")
    from cmaam.merging.moe import build_moe

    output = build_moe(args.config, args.output, device=args.device, seed=args.seed,
                       max_shard_size=args.max_shard_size, overwrite=args.overwrite, allow_pickle=args.allow_pickle,
                       allow_identical_experts=args.allow_identical_experts, progress=not args.no_progress)
    print(f"MoE model written to {output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
