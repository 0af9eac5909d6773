"""Run a mergekit YAML config as is, streaming tensor by tensor: ``python -m cmaam.mergekit CONFIG.yaml OUT``."""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
from cmaam.core.options import MERGE, ExecutionOptions, add_execution_options
from cmaam.merging.config_merge import merge_from_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.mergekit", description=__doc__)
    parser.add_argument("config", help="mergekit YAML config")
    parser.add_argument("output", help="output model folder (written atomically)")
    add_execution_options(parser, (*MERGE, "seed"),
                          help={"dtype": "bfloat16, float16 or float32 for the written tensors (default: the "
                                         "config's out_dtype/dtype, else as stored)",
                                "seed": "seed of random methods (dare_*), per tensor (default: 0)",
                                "adapter_base": "base model of peft LoRA adapter folders in the config (default: "
                                                "their adapter_config.json's; mergekit's BASE+LORA also works)"})
    parser.add_argument("--map", default=None, metavar="auto|FILE.yaml",
                        help="merge models of other types over their mapping onto the base model's layout (else the "
                             "first model's): auto (from the layouts) or a YAML mapping file; see docs/cross_model.md")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mapper = None
    if args.map is not None:
        from cmaam.alignment.mapping import layout_mapper

        mapper = layout_mapper(args.map)
    output = merge_from_config(args.config, args.output, ExecutionOptions.from_args(args), mapper)
    print(f"merged model written to {output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
