"""A tracked VQA evaluation of a model folder: data, generation, scoring, results/<run>/ files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from cmaam.core.errors import CMAAMError
from eval.generation import check_model_folder, is_vision_config, load_generator
from eval.options import check_run_free, default_run_name, tracked_run
from eval.vqa.data import VQAItem, load_vqa_jsonl
from eval.vqa.evaluate import VQAResult, category_figure, evaluate_vqa


def check_images_usable(items: Sequence[VQAItem], data: str | Path, model: str | Path, vision: bool,
                        text_only: bool) -> int:
    """The number of questions whose image the model will not see; an error when a text-only model would drop
    images without ``text_only`` (asked for explicitly with --text-only)."""
    with_images = [item for item in items if item.image is not None]
    if with_images and not vision and not text_only:
        raise CMAAMError(f"{model}: text-only model (no vision_config), but questions with an image: "
                         f"{len(with_images)} of {len(items)} (first: {data}:{with_images[0].line}); pass --text-only "
                         "to evaluate the questions without their images")
    return len(with_images) if text_only else 0


def run_vqa(model: str | Path, data: str | Path, limit: int | None = None, output_dir: str | Path = "results",
            run_name: str | None = None, wandb_mode: str = "offline", wandb_project: str = "cmaam",
            overwrite: bool = False, generator_options: dict[str, Any] | None = None,
            text_only: bool = False) -> tuple[Path, VQAResult]:
    """Evaluate ``model`` on a VQA JSONL; write config.yaml, samples.jsonl, metrics.json and per_category.png.

    Inputs are all checked (data, every image decoded, free run folder, model folder, images vs. a text-only
    model) before the model is loaded; the run folder appears only when the evaluation succeeds. ``text_only``
    asks every question without its image (recorded as ``text_only`` in config.yaml and ``images_dropped`` in
    metrics.json).
    """
    items = load_vqa_jsonl(data, limit=limit)
    run_name = run_name or default_run_name(f"vqa-{Path(data).parent.name or 'data'}", model)
    check_run_free(output_dir, run_name, overwrite, wandb_mode)
    options = dict(generator_options or {})
    vision = is_vision_config(check_model_folder(model, options.get("allow_pickle", False),
                                                 options.get("adapter_base")))
    images_dropped = check_images_usable(items, data, model, vision, text_only)
    max_new_tokens = options.pop("max_new_tokens", 32)
    generator = load_generator(model, max_new_tokens=max_new_tokens, **options)
    config = {"task": "vqa", "model": str(model), "data": str(data), "limit": limit, "count": len(items),
              "text_only": text_only, "generator": {**options, "max_new_tokens": max_new_tokens}}
    with tracked_run(run_name, config, output_dir, wandb_mode=wandb_mode, wandb_project=wandb_project,
                     group="vqa", overwrite=overwrite,
                     inputs=[model, data]) as run:
        result = evaluate_vqa(generator, items, max_new_tokens=max_new_tokens, text_only=text_only)
        result.metrics["images_dropped"] = images_dropped
        run.save_samples(result.samples, "samples")
        run.save_figure(category_figure(result.metrics), "per_category")
        run.log_summary(result.metrics)
    return run.dir, result
