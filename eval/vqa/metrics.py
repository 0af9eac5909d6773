"""VQA metrics: exact match, VQAv2 soft accuracy, relaxed accuracy (numbers within 5%) and ANLS."""

from __future__ import annotations

import unicodedata
from typing import Sequence

from eval.vqa.normalize import normalize_answer


def _as_list(references: str | Sequence[str]) -> list[str]:
    return [references] if isinstance(references, str) else list(references)


def exact_match(prediction: str, references: str | Sequence[str], lang: str = "en") -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0."""
    predicted = normalize_answer(prediction, lang)
    return float(any(predicted == normalize_answer(reference, lang) for reference in _as_list(references)))


def vqa_soft_accuracy(prediction: str, answers: Sequence[str], lang: str = "en") -> float:
    """VQAv2 accuracy: mean over the leave-one-out subsets of the answers of min(#matches / 3, 1).

    With 10 answers of which k match: k >= 4 gives 1.0, k = 3 gives 0.9, k = 2 gives 0.6, k = 1 gives 0.3.
    Fewer than two answers fall back to exact match.
    """
    answers = list(answers)
    if len(answers) < 2:
        return exact_match(prediction, answers, lang) if answers else 0.0
    predicted = normalize_answer(prediction, lang)
    matches = [normalize_answer(answer, lang) == predicted for answer in answers]
    total = sum(matches)
    return sum(min((total - matched) / 3.0, 1.0) for matched in matches) / len(answers)


def _to_float(text: str) -> float | None:
    text = text.strip().replace(",", "")
    try:
        return float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_accuracy(prediction: str, reference: str, tolerance: float = 0.05, lang: str = "en") -> float:
    """ChartQA's relaxed accuracy: numbers count within ``tolerance`` relative error, other answers must match.

    A trailing '%' divides by 100 on both sides; a zero reference needs an exact match.
    """
    predicted, target = _to_float(prediction), _to_float(reference)
    if predicted is not None and target is not None and target != 0:
        return float(abs(predicted - target) / abs(target) <= tolerance)
    return exact_match(prediction, reference, lang)


def levenshtein(first: str, second: str) -> int:
    """Edit distance (insertions, deletions, substitutions all cost 1)."""
    if len(first) < len(second):
        first, second = second, first
    previous = list(range(len(second) + 1))
    for i, a in enumerate(first, start=1):
        current = [i]
        for j, b in enumerate(second, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a != b)))
        previous = current
    return previous[-1]


def _anls_text(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).strip().lower().split())


def anls(prediction: str, references: str | Sequence[str], threshold: float = 0.5) -> float:
    """Average normalised Levenshtein similarity for one question: max over references of 1 - NL,
    where NL = distance / max length, and 0 when NL >= ``threshold`` (texts lowercased, spaces collapsed)."""
    predicted = _anls_text(prediction)
    best = 0.0
    for reference in _as_list(references):
        target = _anls_text(reference)
        length = max(len(predicted), len(target))
        distance = levenshtein(predicted, target) / length if length else 0.0
        best = max(best, 1.0 - distance if distance < threshold else 0.0)
    return best
