"""Run a mergekit YAML config as is, streaming tensor by tensor: ``python -m cmaam.mergekit CONFIG.yaml OUT``."""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
from cmaam.core.errors import CMAAMError
from cmaam.merging.config_merge import merge_from_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.mergekit", description=__doc__)
    parser.add_argument("config", help="mergekit YAML config")
    parser.add_argument("output", help="output model folder (written atomically)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                        help="dtype of the written tensors (default: the config's out_dtype/dtype, else as stored)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard (default: 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read .bin/.pt checkpoints (torch.load with weights_only=True)")
    parser.add_argument("--allow-nonfinite", action="store_true", help="merge even if a tensor holds NaN/Inf")
    parser.add_argument("--seed", type=int, default=0, help="seed of random methods (dare_*), per tensor (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--map", default=None, metavar="auto|FILE.yaml",
                        help="merge models of other types over their mapping onto the base model's layout (else the "
                             "first model's): auto (from the layouts) or a YAML mapping file; see docs/cross_model.md")
    parser.add_argument("--adapter-base", default=None,
                        help="base model of peft LoRA adapter folders in the config (default: adapter_config.json's; mergekit's BASE+LORA syntax also works)")
    return parser


def layout_mapper(map_spec: str):
    """mapper(model, reference) for merge_from_config: each model of another type seen in the reference's layout
    (its mapping summary printed)."""
    from cmaam.alignment.mapping import mapped_source

    def mapper(model, reference):
        view, mapping = mapped_source(model, reference, map_spec)
        if mapping is not None:
            print(mapping.table())
        return view
    return mapper


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seed < 0:
        raise CMAAMError(f"--seed must be >= 0, got {args.seed}")
    output = merge_from_config(
        args.config, args.output, device=args.device, dtype=args.dtype, max_shard_size=args.max_shard_size,
        overwrite=args.overwrite, allow_pickle=args.allow_pickle, allow_nonfinite=args.allow_nonfinite,
        seed=args.seed, progress=not args.no_progress, adapter_base=args.adapter_base,
        mapper=layout_mapper(args.map) if args.map else None,
    )
    print(f"merged model written to {output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
