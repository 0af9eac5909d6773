"""Compare tracked runs: a per-model metrics table (Markdown + CSV), Korean gain, English retention, and plots."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from cmaam.io.atomic import (
    check_no_overlap,
    output_lock,
)
from cmaam.pipeline.compare import (
    OUTPUT_FILES,
    compare,
    load_records,
    report_markdown,
    write_comparison,
)


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
    comparison = compare(load_records(args.runs, args.wandb_project), args.metric, args.korean, args.english,
                         args.base, args.finetuned)
    output = Path(args.output) if args.output else (Path(args.runs[0]) if args.runs else Path("comparison"))
    if args.runs and (output / "metrics.json").exists():
        output = output.parent / "comparison"
    files = [output / name for name in OUTPUT_FILES]
    runs = [record.source for record in comparison.records if record.source and Path(record.source).exists()]
    check_no_overlap(files, runs)
    with output_lock(output):
        paths = write_comparison(comparison, output)
    print(report_markdown(comparison))
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0


if __name__ == "__main__":
    from cmaam.core.cli import run_cli

    run_cli(main)
