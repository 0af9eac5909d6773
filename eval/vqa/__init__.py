"""VQA evaluation: JSONL data, VQA normalisation, exact match / VQAv2 / relaxed / ANLS metrics, scoring."""

from eval.vqa.data import VQAItem, load_vqa_jsonl
from eval.vqa.evaluate import VQAResult, evaluate_vqa, score_item, score_vqa, vqa_requests
from eval.vqa.metrics import anls, exact_match, levenshtein, relaxed_accuracy, vqa_soft_accuracy
from eval.vqa.normalize import normalize_answer

__all__ = ["VQAItem", "VQAResult", "anls", "evaluate_vqa", "exact_match", "levenshtein", "load_vqa_jsonl",
           "normalize_answer", "relaxed_accuracy", "score_item", "score_vqa", "vqa_requests", "vqa_soft_accuracy"]
