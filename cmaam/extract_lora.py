"""``python -m cmaam.extract_lora``: extract a peft LoRA adapter from a fine-tune (truncated SVD of the difference)."""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
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
    parser.add_argument("--dtype", default=None, help="dtype of the adapter tensors (default: the model's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (where the SVDs run)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--allow-pickle", action="store_true", help="accept pickled .bin checkpoints")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = ExtractionOptions(rank=args.rank, include=args.include, exclude=args.exclude,
                                embed_lora=args.embed_lora, save_modules=args.save_module,
                                distribute_scale=not args.no_distribute_scale,
                                skip_undecomposable=args.skip_undecomposable, dtype=args.dtype, device=args.device,
                                allow_pickle=args.allow_pickle, progress=not args.no_progress)
    report = extract_lora(args.base, args.model, args.output, options, overwrite=args.overwrite)
    print(report.table())
    print(f"adapter written to {args.output} (per-module report: {args.output}/{REPORT_FILE})")
    return 0


if __name__ == "__main__":
    run_cli(main)
