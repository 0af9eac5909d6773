"""The experiment pipeline: prepare data -> fine-tune -> CMAAM merges -> linear baselines -> evaluate -> compare."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from cmaam.core.errors import CMAAMError
from cmaam.pipeline.experiment import (
    PRESETS,
    Pipeline,
    evaluate_model,
    load_experiment_config,
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["evaluate-model"]:
        parser = argparse.ArgumentParser(prog="python -m cmaam.experiment evaluate-model")
        parser.add_argument("--model", required=True)
        parser.add_argument("--name", required=True)
        parser.add_argument("--role", default="other")
        parser.add_argument("--korean", required=True)
        parser.add_argument("--english", required=True)
        parser.add_argument("--results-root", required=True)
        parser.add_argument("--limit", type=int)
        parser.add_argument("--batch-size", type=int, default=16)
        parser.add_argument("--max-new-tokens", type=int, default=16)
        parser.add_argument("--device", default="auto")
        parser.add_argument("--wandb-mode", default="offline")
        parser.add_argument("--wandb-project", default="cmaam")
        parser.add_argument("--group")
        args = vars(parser.parse_args(argv[1:]))
        metrics = evaluate_model(**args)
        print(json.dumps({k: v for k, v in metrics.items() if k.count("/") == 1}, indent=2))
        return 0
    parser = argparse.ArgumentParser(prog="scripts/run_experiment.sh", description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=PRESETS, help="demo: built-in CPU demo; tiny/quick/full: real model+corpus")
    parser.add_argument("--config", help="experiment YAML (default cmaam/configs/experiments/<preset>.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.korean_source=/data/korean_vqa")
    parser.add_argument("--steps", help=f"comma-separated subset of: {', '.join(Pipeline.STEPS)}")
    args = parser.parse_args(argv)
    config = load_experiment_config(args.preset, args.config, args.set)
    if args.preset != "demo" and not (config.data.korean_source and config.data.english):
        raise CMAAMError(f"preset {args.preset} needs data.korean_source (Korean VQA corpus) and data.english "
                         "(English VQA folder); e.g. --set data.korean_source=/data/korean_vqa_raw "
                         "--set data.english=/data/en_vqa")
    steps = args.steps.split(",") if args.steps else None
    table = Pipeline(config).run(steps) / "comparison.md"
    if (steps is None or "compare" in steps) and table.is_file():
        print(table.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    from cmaam.core.cli import run_cli

    run_cli(main)
