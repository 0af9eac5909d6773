"""A tracked VQA evaluation of a model folder: data, generation, scoring, results/<run>/ files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmaam.tracking import start_run
from eval.generation import load_generator
from eval.options import check_run_free, default_run_name
from eval.vqa.data import load_vqa_jsonl
from eval.vqa.evaluate import VQAResult, category_figure, evaluate_vqa


def run_vqa(model: str | Path, data: str | Path, limit: int | None = None, output_dir: str | Path = "results",
            run_name: str | None = None, wandb_mode: str = "offline", wandb_project: str = "cmaam",
            overwrite: bool = False, generator_options: dict[str, Any] | None = None) -> tuple[Path, VQAResult]:
    """Evaluate ``model`` on a VQA JSONL; write config.yaml, samples.jsonl, metrics.json and per_category.png.

    Inputs are all checked (data, images, free run folder, model) before anything is written.
    """
    items = load_vqa_jsonl(data, limit=limit)
    run_name = run_name or default_run_name(f"vqa-{Path(data).parent.name or 'data'}", model)
    check_run_free(output_dir, run_name, overwrite)
    options = dict(generator_options or {})
    max_new_tokens = options.pop("max_new_tokens", 32)
    generator = load_generator(model, max_new_tokens=max_new_tokens, **options)
    config = {"task": "vqa", "model": str(model), "data": str(data), "limit": limit, "count": len(items),
              "generator": {**options, "max_new_tokens": max_new_tokens}}
    with start_run(run_name, config, root=output_dir, wandb_mode=wandb_mode, project=wandb_project,
                   group="vqa", inputs=[model, data]) as run:
        result = evaluate_vqa(generator, items, max_new_tokens=max_new_tokens)
        run.save_samples(result.samples, "samples")
        run.save_figure(category_figure(result.metrics), "per_category")
        run.log_summary(result.metrics)
    return run.dir, result
