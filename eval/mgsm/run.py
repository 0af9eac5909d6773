"""A tracked MGSM evaluation of a model folder: data, generation, scoring, results/<run>/ files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval.generation import load_generator
from eval.language import check_language_code, check_threshold
from eval.mgsm.data import load_mgsm
from eval.mgsm.evaluate import MGSMResult, evaluate_mgsm
from eval.mgsm.prompts import build_messages
from eval.options import check_run_free, default_run_name, tracked_run


def run_mgsm(model: str | Path, lang: str, data: str | Path | None = None, limit: int | None = None,
             shots: int = 0, chain_of_thought: bool = True, language_check_threshold: float = 0.5,
             output_dir: str | Path = "results", run_name: str | None = None, wandb_mode: str = "offline",
             wandb_project: str = "cmaam", overwrite: bool = False,
             generator_options: dict[str, Any] | None = None) -> tuple[Path, MGSMResult]:
    """Evaluate ``model`` on MGSM in ``lang``; write config.yaml, samples.jsonl and metrics.json to the run folder.

    Inputs are all checked (language, data, shots, free run folder, model) before anything is written; the run
    folder appears only when the evaluation succeeds (``tracked_run``).
    """
    check_language_code(lang)
    check_threshold(language_check_threshold)
    items = load_mgsm(data, limit=limit, lang=lang)
    build_messages("", lang, shots=shots, chain_of_thought=chain_of_thought)
    run_name = run_name or default_run_name(f"mgsm-{lang}" + (f"-{shots}shot" if shots else ""), model)
    check_run_free(output_dir, run_name, overwrite, wandb_mode)
    generator = load_generator(model, **(generator_options or {}))
    config = {"task": "mgsm", "model": str(model), "lang": lang, "data": str(data) if data else f"bundled:{lang}",
              "limit": limit, "count": len(items), "shots": shots, "chain_of_thought": chain_of_thought,
              "language_check_threshold": language_check_threshold, "generator": generator_options or {}}
    with tracked_run(run_name, config, output_dir, wandb_mode=wandb_mode, wandb_project=wandb_project,
                     group="mgsm", overwrite=overwrite,
                     inputs=[model, data]) as run:
        result = evaluate_mgsm(generator, items, lang, shots=shots, language_check_threshold=language_check_threshold,
                               chain_of_thought=chain_of_thought)
        run.save_samples(result.samples, "samples")
        run.log_summary(result.metrics)
    return run.dir, result
