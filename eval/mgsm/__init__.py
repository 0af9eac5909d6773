"""MGSM (multilingual grade-school math): data, prompts, answer extraction and scoring."""

from eval.mgsm.data import MGSMItem, bundled_path, load_mgsm
from eval.mgsm.evaluate import MGSMResult, evaluate_mgsm, mgsm_requests, score_mgsm
from eval.mgsm.extract import answers_match, extract_answer, parse_number
from eval.mgsm.prompts import MAX_SHOTS, build_messages

__all__ = ["MGSMItem", "MGSMResult", "MAX_SHOTS", "answers_match", "build_messages", "bundled_path",
           "evaluate_mgsm", "extract_answer", "load_mgsm", "mgsm_requests", "parse_number", "score_mgsm"]
