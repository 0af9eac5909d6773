"""``python -m cmaam.extract_lora``: extract a peft LoRA adapter from a fine-tune (truncated SVD of the difference)."""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
from cmaam.core.options import ExecutionOptions, add_execution_options
from cmaam.merging.lora_extraction import REPORT_FILE, ExtractionOptions, extract_lora


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.extract_lora", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("output", help="adapter folder to write (adapter_config.json, adapter_model.safetensors, "
                                       f"{REPORT_FILE})")
    parser.add_argument("--base", required=True, help="base model folder")
    parser.add_argument("--model", required=True, help="fine-tuned model folder (or a peft adapter of the base)")
    parser.add_argument("--rank", type=int, required=True, help="largest LoRA rank (per module: min(rank, shape))")
    parser.add_argument("--include", action="append", default=[], metavar="REGEX",
                        help="decompose only modules matching (repeatable; default: all)")
    parser.add_argument("--exclude", action="append", default=[], metavar="REGEX",
                        help="leave out modules matching (repeatable)")
    parser.add_argument("--save-module", action="append", default=[], metavar="NAME",
                        help="save this module at full rank (modules_to_save; repeatable)")
    parser.add_argument("--embed-lora", action="store_true", help="decompose embeddings too (default: full rank)")
    parser.add_argument("--no-distribute-scale", action="store_true",
                        help="A = S Vh, B = U (default: sqrt(S) on both, as mergekit)")
    parser.add_argument("--skip-undecomposable", action="store_true",
                        help="leave out changed norms and convolutions instead of saving them at full rank")
    add_execution_options(parser, ("device", "dtype", "overwrite", "allow_pickle", "adapter_base", "progress"), help={
        "device": "auto (cuda when available), cpu, cuda or cuda:N: where the SVDs run (default: auto)",
        "dtype": "bfloat16, float16 or float32 for the adapter tensors (default: the model's)",
        "adapter_base": "base model of a peft adapter given as --model (default: its adapter_config.json's)"})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    extraction = ExtractionOptions(rank=args.rank, include=args.include, exclude=args.exclude,
                                   embed_lora=args.embed_lora, save_modules=args.save_module,
                                   distribute_scale=not args.no_distribute_scale,
                                   skip_undecomposable=args.skip_undecomposable)
    report = extract_lora(args.base, args.model, args.output, extraction, ExecutionOptions.from_args(args))
    print(report.table())
    print(f"adapter written to {args.output} (per-module report: {args.output}/{REPORT_FILE})")
    return 0


if __name__ == "__main__":
    run_cli(main)
