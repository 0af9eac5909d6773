"""``python -m cmaam.merge``: alignment-aware VLM merge: one analysis pass, adaptive alphas, one merge pass.

The analysis pass also merges the groups whose alphas it can already know (``cmaam.alignment.early_merge``);
the merge pass reads only the rest, in reverse order, so that it starts with what the page cache still
holds from the end of the analysis pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path


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
from cmaam.alignment.early_merge import EarlyMerge, hold_budget
from cmaam.alignment.scores.analyzer import Analysis, pair_scorer
from cmaam.core.options import ExecutionOptions, parse_size
from cmaam.io import CheckpointReader, parse_dtype
from cmaam.io.atomic import atomic_directory, claim_output
from cmaam.merging.executor import ModelOutput, execute, open_writer, resolve_device
from cmaam.merging.pairs import ALPHAS_FILE, check_interp, pair_jobs, report_unmatched

logger = logging.getLogger(__name__)
ANALYSIS_FOLDER = "analysis"


@dataclass
class MergeResult:
    """What a merge produced: the output folder, the analysis, the alphas and the report data."""

    output: Path
    analysis: Analysis
    plan: AlphaPlan
    report: dict


def merge_vlm(source: str | Path, target: str | Path, output: str | Path, alphas: AlphaConfig | None = None,
              options: ExecutionOptions | None = None, *, interp: str = "linear", model_type: str | None = None,
              rules_file: str | None = None, analyze: bool = False, alphas_only: bool = False,
              print_summary: bool = True) -> MergeResult:
    """Score S against T, compute per-group alphas and write the merged model (config/tokenizer from T).

    ``options``: device, output dtype, overwrite, pickles, NaN/Inf check, shard size, progress.
    ``analyze`` adds report.json, report.md and heatmaps under ``output/analysis``; ``alphas_only``
    writes only those (and alphas.yaml) to ``output``. alphas.yaml is always written.
    """
    options = options or ExecutionOptions()
    alphas = alphas or AlphaConfig()
    alphas.validate()
    check_interp(interp)
    parse_dtype(options.dtype)  # an unknown dtype fails before any work
    inputs = [source, target, rules_file]
    with claim_output(output, inputs=inputs, overwrite=options.overwrite):  # before any work: refused or locked
        source_reader = CheckpointReader(source, allow_pickle=options.allow_pickle)
        target_reader = CheckpointReader(target, allow_pickle=options.allow_pickle)
        readers = {"target": target_reader, "source": source_reader}
        scorer = pair_scorer(source_reader, target_reader, options, model_type=model_type, rules_file=rules_file)
        analysis = scorer.analysis
        state: dict = {}

        def conclude() -> None:
            state["plan"] = compute_alphas(analysis, alphas)
            state["report"] = build_report(analysis, state["plan"],
                                           {"source": str(source), "target": str(target), "interp": interp})
            report_unmatched(analysis.only_in_target, analysis.only_in_source, analysis.not_floating,
                             ALPHAS_FILE + (" and report.json" if analyze or alphas_only else ""))

        def write_extras(folder: Path) -> None:
            write_alphas(folder / ALPHAS_FILE, state["report"])
            if alphas_only:
                write_analysis(folder, state["report"])
            elif analyze:
                write_analysis(folder / ANALYSIS_FOLDER, state["report"])

        if alphas_only:
            execute({"source": source_reader, "target": target_reader}, scorer.jobs(), [scorer], options,
                    description="analysing")
            conclude()
            with atomic_directory(output, options.overwrite, inputs=inputs) as folder:
                write_extras(folder)
        else:
            floating = dict.fromkeys(scorer.scored, 0.0)  # the written layout does not depend on the alphas
            with open_writer(readers, pair_jobs(target_reader, floating, interp), output, options,
                             reference=target) as writer:
                early = EarlyMerge(scorer, readers, writer, alphas, interp, hold_budget(parse_size(options.max_memory)),
                                   resolve_device(options.device))
                execute({"source": source_reader, "target": target_reader}, scorer.jobs(), [scorer, early], options,
                        description="analysing")
                conclude()
                rest = [job for job in pair_jobs(target_reader, state["plan"].tensor_alphas, interp)
                        if job.output_name not in early.written]
                checked = {(model, name) for name in scorer.scored for model in readers}  # by the analysis pass
                execute(readers, rest[::-1], [ModelOutput(writer, before_commit=write_extras)], options,
                        checked=checked)
        plan, report = state["plan"], state["report"]
    if print_summary:
        print(summary_table(report))
        print(f"strategy {alphas.strategy}: {len(plan.groups)} group(s), mean alpha {plan.mean_alpha:.4f} "
              f"-> {output}")
    return MergeResult(Path(output), analysis, plan, report)
