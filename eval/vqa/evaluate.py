"""Score VQA: generate short answers with any generator, then exact match, VQAv2 accuracy, relaxed accuracy, ANLS."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence

from cmaam.core.errors import CMAAMError
from eval.generation import GenerationRequest, max_new_tokens_set, rendered_prompts
from eval.vqa.data import VQAItem
from eval.vqa.metrics import anls, exact_match, relaxed_accuracy, vqa_soft_accuracy
from eval.vqa.normalize import normalize_answer

INSTRUCTIONS = {"en": "Answer the question using a single word or phrase.",
                "ko": "한 단어나 짧은 구로 답하세요.",
                "ja": "単語か短いフレーズで答えてください。",
                "zh": "请用一个词或短语回答。"}
CJK_FONTS = ("Noto Sans CJK KR", "Noto Sans CJK JP", "NanumGothic", "Malgun Gothic", "AppleGothic")
METRICS = ("exact_match", "vqa_accuracy", "relaxed_accuracy", "anls")


@dataclass
class VQAResult:
    """Aggregate metrics (overall and 'category/<name>/<metric>') and one row per item."""

    metrics: dict[str, float]
    samples: list[dict] = field(default_factory=list)


def vqa_requests(items: Sequence[VQAItem], text_only: bool = False) -> list[GenerationRequest]:
    """One request per item: the question followed by the short-answer instruction of its language, with the
    item's image unless ``text_only``."""
    return [GenerationRequest(text=f"{item.question.strip()}\n{INSTRUCTIONS[item.lang]}",
                              image=None if text_only else item.image) for item in items]


def score_item(completion: str, item: VQAItem) -> dict[str, float]:
    """Every metric of one prediction; VQAv2 accuracy uses the 10 answers when given, else exact match."""
    references = list(item.answers) if item.answers else [item.answer]
    return {
        "exact_match": exact_match(completion, item.answer, item.lang),
        "vqa_accuracy": vqa_soft_accuracy(completion, references, item.lang) if item.answers
        else exact_match(completion, item.answer, item.lang),
        "relaxed_accuracy": relaxed_accuracy(completion, item.answer, lang=item.lang),
        "anls": anls(completion, references),
    }


def score_vqa(completions: Sequence[str], items: Sequence[VQAItem], prompts: Sequence[str] | None = None) -> VQAResult:
    """Score completions against the items' answers, overall and per category."""
    if len(completions) != len(items):
        raise CMAAMError(f"{len(completions)} completions for {len(items)} items")
    if not items:
        raise CMAAMError("no VQA items to score")
    samples, by_category = [], defaultdict(list)
    for position, (item, completion) in enumerate(zip(items, completions)):
        scores = score_item(completion, item)
        by_category[item.category].append(scores)
        samples.append({"id": item.id, "category": item.category, "lang": item.lang, "question": item.question,
                        "image": item.image, "prompt": prompts[position] if prompts is not None else None,
                        "completion": completion, "extracted": normalize_answer(completion, item.lang),
                        "gold": item.answer, "answers": list(item.answers) if item.answers else None,
                        "correct": scores["exact_match"] == 1.0, **scores})
    metrics: dict[str, float] = {name: sum(s[name] for s in samples) / len(samples) for name in METRICS}
    metrics["count"] = len(samples)
    for category in sorted(by_category):
        rows = by_category[category]
        for name in METRICS:
            metrics[f"category/{category}/{name}"] = sum(r[name] for r in rows) / len(rows)
        metrics[f"category/{category}/count"] = len(rows)
    return VQAResult(metrics=metrics, samples=samples)


def evaluate_vqa(generator: Any, items: Sequence[VQAItem], max_new_tokens: int = 32,
                 text_only: bool = False) -> VQAResult:
    """Answer every item with ``generator`` (anything with ``generate(requests)``) and score the answers;
    ``text_only`` asks the questions without their images."""
    requests = vqa_requests(items, text_only=text_only)
    prompts = rendered_prompts(generator, requests)
    with max_new_tokens_set(generator, max_new_tokens):
        completions = generator.generate(requests)
    return score_vqa(completions, items, prompts=prompts)


def category_figure(metrics: dict[str, float]):
    """A bar chart (matplotlib figure) of exact match and VQA accuracy per category.

    Korean category names need a CJK font (Noto Sans CJK, NanumGothic); without one they show as boxes.
    """
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import font_manager

    warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
    installed = {font.name for font in font_manager.fontManager.ttflist}
    fonts = [name for name in CJK_FONTS if name in installed] + ["DejaVu Sans"]
    categories = sorted({key.split("/")[1] for key in metrics if key.startswith("category/")})
    with plt.rc_context({"font.family": fonts}):
        figure, axes = plt.subplots(figsize=(max(4.0, 0.9 * len(categories) + 2), 3.2))
        width = 0.4
        for offset, name in ((-width / 2, "exact_match"), (width / 2, "vqa_accuracy")):
            values = [metrics[f"category/{c}/{name}"] for c in categories]
            axes.bar([i + offset for i in range(len(categories))], values, width, label=name)
        axes.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
        axes.set_ylim(0, 1)
        axes.set_ylabel("score")
        axes.set_title(f"VQA by category ({int(metrics['count'])} questions)")
        axes.legend()
        figure.tight_layout()
    return figure
