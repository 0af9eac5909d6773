"""Compare tracked runs: a per-model metrics table (Markdown + CSV), Korean gain, English retention, and plots."""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.pipeline.compare import compare_runs, report_markdown


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmaam.compare", description=__doc__)
    parser.add_argument("runs", nargs="*", help="result folders, or folders holding result folders")
    parser.add_argument("--wandb-project", help="also read the runs of this W&B project (offline folders or online)")
    parser.add_argument("--metric", default="exact_match", help="metric compared (default exact_match)")
    parser.add_argument("--korean", default="ko", help="metric prefix of the target-language set (default ko)")
    parser.add_argument("--english", default="en", help="metric prefix of the retention set (default en)")
    parser.add_argument("--base", help="run name of the base model (else the run whose config role is base)")
    parser.add_argument("--finetuned", help="run name of the fine-tuned model")
    parser.add_argument("--output", help="folder for comparison.md/.csv/.png and frontier.csv/.png "
                                         "(default: beside the first run)")
    args = parser.parse_args(argv)
    if not args.runs and not args.wandb_project:
        parser.error("give result folders or --wandb-project")
    comparison, paths = compare_runs(args.runs, args.output, args.wandb_project, args.metric, args.korean,
                                     args.english, args.base, args.finetuned)
    print(report_markdown(comparison))
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0


if __name__ == "__main__":
    from cmaam.core.cli import run_cli

    run_cli(main)
