"""``python -m cmaam.merge``: alignment-aware VLM merge: one analysis pass, adaptive alphas, one merge pass."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from cmaam.alignment.alphas import (
    AlphaConfig,
    AlphaPlan,
    compute_alphas,
)
from cmaam.alignment.report import (
    build_report,
    summary_table,
    write_alphas,
    write_analysis,
)
from cmaam.alignment.mapping import AUTO, TensorMapping, mapped_source
from cmaam.alignment.scores.analyzer import Analysis, analyze_pair, resolve_layout
from cmaam.core.errors import CMAAMError
from cmaam.io import CheckpointReader, parse_dtype
from cmaam.io.adapters import open_model
from cmaam.io.atomic import atomic_directory, claim_output
from cmaam.merging.executor import TensorJob, run_merge
from cmaam.merging.methods import get_method
from cmaam.merging.mapped import keep_target_parts

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
    mapping: TensorMapping | None = None


def merge_vlm(source: str | Path, target: str | Path, output: str | Path, alphas: AlphaConfig | None = None,
              interp: str = "linear", model_type: str | None = None, rules_file: str | None = None,
              analyze: bool = False, alphas_only: bool = False, dtype: str | torch.dtype | None = None,
              device: str = "auto", overwrite: bool = False, allow_pickle: bool = False,
              allow_nonfinite: bool = False, max_shard_size: str | int = "5GB", progress: bool = True,
              print_summary: bool = True, adapter_base: str | Path | None = None,
              map_spec: str | Path = AUTO) -> MergeResult:
    """Score S against T, compute per-group alphas and write the merged model (config/tokenizer from T).

    ``analyze`` adds report.json, report.md and heatmaps under ``output/analysis``; ``alphas_only``
    writes only those (and alphas.yaml) to ``output``. alphas.yaml is always written. S or T may be a peft
    LoRA adapter folder (its base from adapter_config.json or ``adapter_base``). Models of different types (a
    text LLM into a VLM's language model, LLaVA-OneVision onto Qwen2-VL) are merged over the pairs of ``map_spec``
    ('auto': from the two layouts, or a YAML mapping file); the target's other tensors are kept.
    """
    alphas = alphas or AlphaConfig()
    alphas.validate()
    check_interp(interp)
    dtype = parse_dtype(dtype)
    inputs = [source, target, rules_file, None if str(map_spec) == AUTO else map_spec]
    with claim_output(output, inputs=inputs, overwrite=overwrite):  # before any work: refused or locked
        source_reader = open_model(source, allow_pickle=allow_pickle, adapter_base=adapter_base)
        target_reader = open_model(target, allow_pickle=allow_pickle, adapter_base=adapter_base)
        layout = resolve_layout(target_reader, model_type, rules_file)
        source_reader, mapping = mapped_source(source_reader, target_reader, map_spec, layout)
        if mapping is not None and print_summary:
            print(mapping.table())
        analysis = analyze_pair(source_reader, target_reader, layout=layout, device=device,
                                allow_nonfinite=allow_nonfinite, progress=progress)
        if mapping is not None:
            analysis.only_in_source = list(mapping.source_only)
        plan = compute_alphas(analysis, alphas)
        report = build_report(analysis, plan, {"source": str(source), "target": str(target), "interp": interp},
                              mapping.summary() if mapping is not None else None)
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
            readers = {"target": target_reader, "source": source_reader}
            run_merge(readers, keep_target_parts(pair_jobs(target_reader, plan.tensor_alphas, interp), readers,
                                                "target"), output,
                      reference=target_reader.reference_folder, dtype=dtype,
                      device=device, allow_nonfinite=allow_nonfinite, overwrite=overwrite,
                      max_shard_size=max_shard_size, progress=progress, before_commit=write_extras)
    if print_summary:
        print(summary_table(report))
        print(f"strategy {alphas.strategy}: {len(plan.groups)} group(s), mean alpha {plan.mean_alpha:.4f} "
              f"-> {output}")
    return MergeResult(Path(output), analysis, plan, report, mapping)
