"""``python -m cmaam.merge``: alignment-aware VLM merge: one analysis pass, adaptive alphas, one merge pass.

The analysis pass also merges the groups whose alphas it can already know (``cmaam.alignment.early_merge``);
the merge pass reads only the rest, in reverse order, so that it starts with what the page cache still
holds from the end of the analysis pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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
from cmaam.alignment.mapping import AUTO, TensorMapping, mapped_source
from cmaam.alignment.scores.analyzer import Analysis, pair_scorer, resolve_layout
from cmaam.core.options import ExecutionOptions, parse_size
from cmaam.io import parse_dtype
from cmaam.io.adapters import open_model
from cmaam.io.atomic import atomic_directory, claim_output
from cmaam.io.reader import TensorNames
from cmaam.merging.executor import ModelOutput, execute, open_writer, resolve_device
from cmaam.merging.mapped import keep_target_parts
from cmaam.merging.pairs import ALPHAS_FILE, check_interp, pair_jobs, report_unmatched

logger = logging.getLogger(__name__)
ANALYSIS_FOLDER = "analysis"


@dataclass
class Adaptation:
    """Group alphas chosen from data by an adaptive search (AdaMerging, AdaMMS), and what it reports.

    ``report`` becomes report.json's ``adaptation`` section, ``markdown`` a section of report.md and
    ``figure`` (PNG bytes) ``analysis/adaptation.png``.
    """

    method: str
    alphas: dict[str, float]
    report: dict
    markdown: str = ""
    figure: bytes | None = None


# An adaptive search: (the CMAAM alpha plan, the layout, the source as the merge reads it, the target reader)
# -> Adaptation. The source is the mapped view for models of different types (the target's names, vocabulary rows
# aligned) and W + scale * B @ A for an adapter, so the search's task vectors are the merge's. Built by cmaam.search.
Adapter = Callable[[AlphaPlan, object, TensorNames, TensorNames], Adaptation]
ADAPTATION_FIGURE = "adaptation.png"


@dataclass
class MergeResult:
    """What a merge produced: the output folder, the analysis, the alphas and the report data."""

    output: Path
    analysis: Analysis
    plan: AlphaPlan
    report: dict
    mapping: TensorMapping | None = None  # for models of different types: which tensors were paired
    adaptation: Adaptation | None = None


def merge_vlm(source: str | Path, target: str | Path, output: str | Path, alphas: AlphaConfig | None = None,
              options: ExecutionOptions | None = None, *, interp: str = "linear", model_type: str | None = None,
              rules_file: str | None = None, analyze: bool = False, alphas_only: bool = False,
              print_summary: bool = True, map_spec: str | Path = AUTO, adapt: Adapter | None = None) -> MergeResult:
    """Score S against T, compute per-group alphas and write the merged model (config/tokenizer from T).

    ``options``: device, output dtype, overwrite, pickles, NaN/Inf check, shard size, progress.
    ``analyze`` adds report.json, report.md and heatmaps under ``output/analysis``; ``alphas_only``
    writes only those (and alphas.yaml) to ``output``. alphas.yaml is always written. S or T may be a peft
    LoRA adapter folder (its base from adapter_config.json or ``options.adapter_base``). Models of different
    types (a text LLM into a VLM's language model, LLaVA-OneVision onto Qwen2-VL) are merged over the pairs of
    ``map_spec`` ('auto': from the two layouts, or a YAML mapping file); the target's other tensors are kept.
    ``adapt`` (an adaptive search from ``cmaam.search``) replaces the group alphas by the ones it chooses,
    starting from the CMAAM plan; its report goes into the analysis, which is then always written.
    """
    options = options or ExecutionOptions()
    analyze = analyze or adapt is not None  # an adaptation's report is always written
    alphas = alphas or AlphaConfig()
    alphas.validate()
    check_interp(interp)
    parse_dtype(options.dtype)  # an unknown dtype fails before any work
    inputs = [source, target, rules_file, None if str(map_spec) == AUTO else map_spec]
    with claim_output(output, inputs=inputs, overwrite=options.overwrite):  # before any work: refused or locked
        source_reader = open_model(source, options.allow_pickle, options.adapter_base)
        target_reader = open_model(target, options.allow_pickle, options.adapter_base)
        layout = resolve_layout(target_reader, model_type, rules_file)
        source_reader, mapping = mapped_source(source_reader, target_reader, map_spec, layout)
        if mapping is not None and print_summary:
            print(mapping.table())
        readers = {"target": target_reader, "source": source_reader}
        scorer = pair_scorer(source_reader, target_reader, options, layout=layout)
        analysis = scorer.analysis
        state: dict = {}

        def conclude() -> None:
            """Alphas (adapted when asked), the report and the unmatched-tensor notes, once every score is in."""
            if mapping is not None:
                analysis.only_in_source = list(mapping.source_only)
            plan = compute_alphas(analysis, alphas)
            adaptation = adapt(plan, layout, source_reader, target_reader) if adapt is not None else None
            if adaptation is not None:
                for group, value in adaptation.alphas.items():
                    plan.groups[group].alpha = float(value)
            report = build_report(analysis, plan, {"source": str(source), "target": str(target), "interp": interp},
                                  mapping.summary() if mapping is not None else None)
            if adaptation is not None:
                report["settings"]["adapt"] = adaptation.method
                report["adaptation"] = adaptation.report
            report_unmatched(analysis.only_in_target, analysis.only_in_source, analysis.not_floating,
                             ALPHAS_FILE + (" and report.json" if analyze or alphas_only else ""))
            state.update(plan=plan, report=report, adaptation=adaptation)

        def write_extras(folder: Path) -> None:
            report, adaptation = state["report"], state["adaptation"]
            write_alphas(folder / ALPHAS_FILE, report)
            sections = [adaptation.markdown] if adaptation is not None and adaptation.markdown else []
            figures = {ADAPTATION_FIGURE: adaptation.figure} if adaptation is not None and adaptation.figure else {}
            if alphas_only:
                write_analysis(folder, report, sections, figures)
            elif analyze:
                write_analysis(folder / ANALYSIS_FOLDER, report, sections, figures)

        def merge_jobs(tensor_alphas: dict[str, float]) -> list:
            return keep_target_parts(pair_jobs(target_reader, tensor_alphas, interp), readers, "target")

        if alphas_only:
            execute(readers, scorer.jobs(), [scorer], options, description="analysing")
            conclude()
            with atomic_directory(output, options.overwrite, inputs=inputs) as folder:
                write_extras(folder)
        else:
            floating = dict.fromkeys(scorer.scored, 0.0)  # the written layout does not depend on the alphas
            with open_writer(readers, merge_jobs(floating), output, options,
                             reference=target_reader.reference_folder) as writer:
                # Early merges need alphas final once their unit is scored: not with an adaptive search (it
                # changes them afterwards) nor a mapping (it keeps the target's own vocabulary rows).
                budget = hold_budget(parse_size(options.max_memory)) if adapt is None and mapping is None else 0
                early = EarlyMerge(scorer, readers, writer, alphas, interp, budget, resolve_device(options.device))
                execute(readers, scorer.jobs(), [scorer, early], options, description="analysing")
                conclude()
                rest = [job for job in merge_jobs(state["plan"].tensor_alphas) if job.output_name not in early.written]
                checked = {(model, name) for name in scorer.scored for model in readers}  # by the analysis pass
                execute(readers, rest[::-1], [ModelOutput(writer, before_commit=write_extras)], options,
                        checked=checked)
        plan, report, adaptation = state["plan"], state["report"], state["adaptation"]
    if print_summary:
        print(summary_table(report))
        print(f"strategy {alphas.strategy}: {len(plan.groups)} group(s), mean alpha {plan.mean_alpha:.4f} "
              f"-> {output}")
    return MergeResult(Path(output), analysis, plan, report, mapping, adaptation)
