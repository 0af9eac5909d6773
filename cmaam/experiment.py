"""The experiment pipeline: prepare data -> fine-tune -> CMAAM merges -> linear baselines -> evaluate -> compare."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from cmaam.core.errors import CMAAMError
from cmaam.core.options import add_execution_options


def build_parser() -> argparse.ArgumentParser:
    from cmaam.pipeline.experiment import PRESETS, Pipeline

    parser = argparse.ArgumentParser(prog="scripts/run_experiment.sh", description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=PRESETS, help="demo: built-in CPU demo; tiny/quick/full: real model+corpus")
    parser.add_argument("--config", help="experiment YAML (default cmaam/configs/experiments/<preset>.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.korean_source=/data/korean_vqa (repeatable)")
    parser.add_argument("--steps", help=f"comma-separated subset of: {', '.join(Pipeline.STEPS)}")
    add_execution_options(parser, ("device", "seed"), from_config=True,
                          help={"device": "device of the merges and evaluations: auto, cpu, cuda or cuda:N",
                                "seed": "seed of every step (data, initialisation, LoRA, data order)"})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from cmaam.pipeline.experiment import Pipeline, load_experiment_config

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    flags = [f"{key}={getattr(args, key)}" for key in ("device", "seed") if hasattr(args, key)]
    config = load_experiment_config(args.preset, args.config, [*args.set, *flags])
    if args.preset != "demo" and not (config.data.korean_source and config.data.english):
        raise CMAAMError(f"preset {args.preset} needs data.korean_source (Korean VQA corpus) and data.english "
                         "(English VQA folder); e.g. --set data.korean_source=/data/korean_vqa_raw "
                         "--set data.english=/data/en_vqa")
    steps = args.steps.split(",") if args.steps else None
    pipeline = Pipeline(config)
    pipeline.run(steps)
    if steps is None or "compare" in steps:
        tables = pipeline.tables()
        for name, table in tables:
            if len(tables) > 1:
                print(f"## Fine-tune: {name}\n")
            print(table.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    from cmaam.core.cli import run_cli

    run_cli(main)
