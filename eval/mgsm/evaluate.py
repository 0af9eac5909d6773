"""Score MGSM: generate with any generator, extract answers, accuracy with and without a language check."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from cmaam.core.errors import CMAAMError
from eval.generation import GenerationRequest, rendered_prompts
from eval.language import check_language_code, is_language, language_ratio
from eval.mgsm.data import MGSMItem
from eval.mgsm.extract import answers_match, extract_answer
from eval.mgsm.prompts import build_messages


@dataclass
class MGSMResult:
    """Aggregate metrics (accuracy, accuracy_with_language_check, ...) and one row per item."""

    metrics: dict[str, float]
    samples: list[dict] = field(default_factory=list)


def mgsm_requests(items: Sequence[MGSMItem], lang: str, shots: int = 0,
                  chain_of_thought: bool = True) -> list[GenerationRequest]:
    """One generation request per item: exemplar turns as history, the question as the user text."""
    requests = []
    for item in items:
        messages = build_messages(item.question, lang, shots=shots, chain_of_thought=chain_of_thought)
        requests.append(GenerationRequest(text=messages[-1]["content"], history=messages[:-1]))
    return requests


def score_mgsm(completions: Sequence[str], items: Sequence[MGSMItem], lang: str,
               language_check_threshold: float = 0.5, prompts: Sequence[str] | None = None) -> MGSMResult:
    """Score completions against gold answers; a completion counts under the language check only if
    it is correct and at least ``language_check_threshold`` of its letters are in ``lang``'s script."""
    check_language_code(lang)
    if len(completions) != len(items):
        raise CMAAMError(f"{len(completions)} completions for {len(items)} items")
    if not items:
        raise CMAAMError("no MGSM items to score")
    samples = []
    for position, (item, completion) in enumerate(zip(items, completions)):
        extracted = extract_answer(completion, lang)
        correct = answers_match(extracted, item.answer)
        language_ok = is_language(completion, lang, language_check_threshold)
        samples.append({
            "index": item.index, "question": item.question,
            "prompt": prompts[position] if prompts is not None else None,
            "completion": completion, "extracted": extracted, "gold": item.answer, "correct": correct,
            "language_ratio": round(language_ratio(completion, lang), 6), "language_ok": language_ok,
            "correct_with_language_check": correct and language_ok,
        })
    count = len(samples)
    metrics = {
        "accuracy": sum(s["correct"] for s in samples) / count,
        "accuracy_with_language_check": sum(s["correct_with_language_check"] for s in samples) / count,
        "language_match_rate": sum(s["language_ok"] for s in samples) / count,
        "no_answer_rate": sum(s["extracted"] is None for s in samples) / count,
        "count": count,
    }
    return MGSMResult(metrics=metrics, samples=samples)


def evaluate_mgsm(generator: Any, items: Sequence[MGSMItem], lang: str, shots: int = 0,
                  language_check_threshold: float = 0.5, chain_of_thought: bool = True) -> MGSMResult:
    """Generate an answer for every item with ``generator`` (anything with ``generate(requests)``) and score it."""
    check_language_code(lang)
    requests = mgsm_requests(items, lang, shots=shots, chain_of_thought=chain_of_thought)
    prompts = rendered_prompts(generator, requests)
    completions = generator.generate(requests)
    return score_mgsm(completions, items, lang, language_check_threshold, prompts=prompts)
