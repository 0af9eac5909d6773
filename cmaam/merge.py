"""``python -m cmaam.merge``: alignment-aware VLM merge: one analysis pass, adaptive alphas, one merge pass."""

from __future__ import annotations

import argparse
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from cmaam.alphas import STRATEGIES, AlphaConfig, AlphaPlan, compute_alphas, parse_score_weights
from cmaam.atomic import atomic_directory, claim_output
from cmaam.checkpoint import CheckpointReader, parse_dtype
from cmaam.cli import run_cli
from cmaam.engine import TensorJob, run_merge
from cmaam.errors import CMAAMError
from cmaam.methods import get_method
from cmaam.report import build_report, summary_table, write_alphas, write_analysis
from cmaam.scores.analyzer import Analysis, analyze_pair

INTERPOLATIONS = ("linear", "slerp")
ANALYSIS_FOLDER = "analysis"
ALPHAS_FILE = "alphas.yaml"


def interpolate(tensors: list[torch.Tensor], alpha: float, interp: str = "linear") -> torch.Tensor:
    """Merge [target, source] at ``alpha``: (1 - alpha) * T + alpha * S, or slerp from T (t=0) to S (t=1)."""
    target, source = tensors
    if interp == "slerp":
        return get_method("slerp")([source], target, t=alpha)
    return get_method("linear")([target, source], None, weight=[1.0 - alpha, alpha], normalize=False)


def check_interp(interp: str) -> None:
    """One-line error for an unknown interpolation."""
    if interp not in INTERPOLATIONS:
        raise CMAAMError(f"unknown --interp {interp!r} (choose {', '.join(INTERPOLATIONS)})")


def pair_jobs(target: CheckpointReader, alphas: dict[str, float], interp: str) -> list[TensorJob]:
    """One job per target tensor: interpolated when it has an alpha, else copied from the target."""
    jobs = []
    for name in target.keys():
        if name in alphas:
            merge = functools.partial(interpolate, alpha=alphas[name], interp=interp)
            jobs.append(TensorJob(name, [("target", name), ("source", name)], merge))
        else:
            jobs.append(TensorJob(name, [("target", name)]))
    return jobs


def report_unmatched(only_in_target: list[str], only_in_source: list[str], not_floating: list[str],
                     where: str) -> None:
    """Print how many tensors were not interpolated and why (never dropped silently)."""
    if only_in_target or not_floating:
        print(f"note: {len(only_in_target)} tensor(s) only in the target and {len(not_floating)} "
              f"non-floating tensor(s) were kept from the target (listed in {where})", file=sys.stderr)
    if only_in_source:
        shown = ", ".join(only_in_source[:3]) + (" ..." if len(only_in_source) > 3 else "")
        print(f"note: {len(only_in_source)} tensor(s) only in the source were skipped: {shown} "
              f"(listed in {where})", file=sys.stderr)


@dataclass
class MergeResult:
    """What a merge produced: the output folder, the analysis, the alphas and the report data."""

    output: Path
    analysis: Analysis
    plan: AlphaPlan
    report: dict


def merge_vlm(source: str | Path, target: str | Path, output: str | Path, alphas: AlphaConfig | None = None,
              interp: str = "linear", model_type: str | None = None, rules_file: str | None = None,
              analyze: bool = False, alphas_only: bool = False, dtype: str | torch.dtype | None = None,
              device: str = "auto", overwrite: bool = False, allow_pickle: bool = False,
              allow_nonfinite: bool = False, max_shard_size: str | int = "5GB", progress: bool = True,
              print_summary: bool = True) -> MergeResult:
    """Score S against T, compute per-group alphas and write the merged model (config/tokenizer from T).

    ``analyze`` adds report.json, report.md and heatmaps under ``output/analysis``; ``alphas_only``
    writes only those (and alphas.yaml) to ``output``. alphas.yaml is always written.
    """
    alphas = alphas or AlphaConfig()
    alphas.validate()
    check_interp(interp)
    dtype = parse_dtype(dtype)
    inputs = [source, target, rules_file]
    with claim_output(output, inputs=inputs, overwrite=overwrite):  # before any work: refused or locked
        source_reader = CheckpointReader(source, allow_pickle=allow_pickle)
        target_reader = CheckpointReader(target, allow_pickle=allow_pickle)
        analysis = analyze_pair(source_reader, target_reader, model_type=model_type, rules_file=rules_file,
                                device=device, allow_nonfinite=allow_nonfinite, progress=progress)
        plan = compute_alphas(analysis, alphas)
        report = build_report(analysis, plan, {"source": str(source), "target": str(target), "interp": interp})
        report_unmatched(analysis.only_in_target, analysis.only_in_source, analysis.not_floating,
                         ALPHAS_FILE + (" and report.json" if analyze or alphas_only else ""))

        def write_extras(folder: Path) -> None:
            write_alphas(folder / ALPHAS_FILE, report)
            if alphas_only:
                write_analysis(folder, report)
            elif analyze:
                write_analysis(folder / ANALYSIS_FOLDER, report)

        if alphas_only:
            with atomic_directory(output, overwrite, inputs=inputs) as folder:
                write_extras(folder)
        else:
            run_merge({"target": target_reader, "source": source_reader},
                      pair_jobs(target_reader, plan.tensor_alphas, interp), output, reference=target, dtype=dtype,
                      device=device, allow_nonfinite=allow_nonfinite, overwrite=overwrite,
                      max_shard_size=max_shard_size, progress=progress, before_commit=write_extras)
    if print_summary:
        print(summary_table(report))
        print(f"strategy {alphas.strategy}: {len(plan.groups)} group(s), mean alpha {plan.mean_alpha:.4f} "
              f"-> {output}")
    return MergeResult(Path(output), analysis, plan, report)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by merge and sweep: source/target, output dtype, device, safety switches."""
    parser.add_argument("--source", required=True, help="model folder holding the knowledge to inject (S)")
    parser.add_argument("--target", required=True, help="model folder whose architecture, config and tokenizer are kept (T)")
    parser.add_argument("--interp", default="linear", choices=INTERPOLATIONS, help="linear or slerp (t = alpha)")
    parser.add_argument("--dtype", default=None, help="output dtype (bfloat16, float16, float32); default: as stored")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard (default 5GB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--allow-pickle", action="store_true", help="accept pickled .bin checkpoints")
    parser.add_argument("--allow-nonfinite", action="store_true", help="merge even if NaN/Inf appear")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.merge", description=__doc__.split(":", 1)[1].strip())
    add_common_arguments(parser)
    parser.add_argument("--output", required=True, help="output model folder (or analysis folder with --alphas-only)")
    parser.add_argument("--strategy", default="basic", choices=STRATEGIES, help="how tensors are grouped")
    parser.add_argument("--base-alpha", type=float, default=0.5, help="alpha before scaling by A_g (1 - v_g)")
    parser.add_argument("--alpha-min", type=float, default=0.0)
    parser.add_argument("--alpha-max", type=float, default=1.0)
    parser.add_argument("--model-type", default=None, help="layout to use (default: config.json's model_type)")
    parser.add_argument("--rules-file", default=None, help="YAML component rules for a new architecture")
    parser.add_argument("--preserve-mean", action="store_true", help="rescale so the mean alpha is --base-alpha")
    parser.add_argument("--score-weights", default=None, help="e.g. pda=0.4,gfs=0.3,cmbc=0.3 (all 0: A = 1)")
    parser.add_argument("--no-sensitivity", action="store_true", help="ablation: v_g = 0")
    parser.add_argument("--analyze", action="store_true", help="also write OUTPUT/analysis/ (report + heatmaps)")
    parser.add_argument("--alphas-only", action="store_true", help="write only the analysis and alphas to OUTPUT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    alphas = AlphaConfig(strategy=args.strategy, base_alpha=args.base_alpha, alpha_min=args.alpha_min,
                         alpha_max=args.alpha_max, score_weights=parse_score_weights(args.score_weights),
                         preserve_mean=args.preserve_mean, use_sensitivity=not args.no_sensitivity)
    merge_vlm(args.source, args.target, args.output, alphas, interp=args.interp, model_type=args.model_type,
              rules_file=args.rules_file, analyze=args.analyze, alphas_only=args.alphas_only, dtype=args.dtype,
              device=args.device, overwrite=args.overwrite, allow_pickle=args.allow_pickle,
              allow_nonfinite=args.allow_nonfinite, max_shard_size=args.max_shard_size,
              progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    run_cli(main)
