"""Answer extraction for math word problems: the number after the final answer marker, else the last number.

Handles thousands separators ("1,000", "1 000"), decimals, negatives, full-width digits, trailing units
and East Asian multipliers written after digits ("7万" = 70000, "3만 5000" = 35000).
"""

from __future__ import annotations

import math
import re
import unicodedata

from cmaam.errors import CMAAMError
from eval.language import check_language_code

ANSWER_MARKERS = {
    "en": (r"the (?:final )?answer is", r"final answer\s*[:：]?", r"\banswer\s*[:：]"),
    "ja": (r"答えは", r"答え\s*[:：]", r"解答(?:は|\s*[:：])", r"答[:：]"),
    "zh": (r"答案(?:是|为|\s*[:：])", r"答[:：]"),
    "ko": (r"정답(?:은|는|\s*[:：])", r"(?<![가-힣])답\s*(?:[:：]|은|는)"),
}
_NUMBER = (r"(?<![0-9A-Za-z.])(?P<sign>-)?(?P<integer>\d{1,3}(?:[,\u00a0\u202f\u2009 ]\d{3})+(?![0-9])|\d+)"
           r"(?P<fraction>\.\d+)?")
_AMOUNT = re.compile(_NUMBER + r"(?:[ ]?(?P<thousand>[千천])(?![克米瓦卡]))?(?:[ ]?(?P<big>[万萬만億亿억]))?")
_MULTIPLIERS = {"千": 1e3, "천": 1e3, "万": 1e4, "萬": 1e4, "만": 1e4, "億": 1e8, "亿": 1e8, "억": 1e8}
_CLAUSE_END = re.compile(r"[\n。!?！？]|\.(?!\d)")
_SUPERSCRIPTS = str.maketrans({c: " " for c in "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻"})
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-", "\ufe63": "-", "\uff0d": "-"})
_FULLWIDTH_COMMA = re.compile(r"，(?![０-９])|(?<![０-９])，")


def normalize_text(text: str) -> str:
    """NFKC (full-width digits and signs to ASCII) with minus signs unified and clause commas kept apart.

    A full-width comma is a thousands separator only between full-width digits ("１，０００");
    elsewhere it separates clauses and becomes "、" so that "5，100" is not read as 5100.
    """
    text = _FULLWIDTH_COMMA.sub("、", text.translate(_SUPERSCRIPTS))
    text = unicodedata.normalize("NFKC", text).translate(_MINUS_SIGNS)
    return text.replace("\u200b", "")


def _amounts(text: str) -> list[tuple[int, int, float]]:
    """(start, end, value) of every amount in normalised ``text``, multiplier sequences joined."""
    amounts: list[tuple[int, int, float]] = []
    previous_big = None
    for match in _AMOUNT.finditer(text):
        integer = re.sub(r"[^0-9]", "", match["integer"])
        value = float(integer + (match["fraction"] or ""))
        if match["thousand"]:
            value *= 1e3
        big = _MULTIPLIERS[match["big"]] if match["big"] else None
        if big:
            value *= big
        if match["sign"]:
            value = -value
        joined = (amounts and previous_big and not match["sign"] and match.start() - amounts[-1][1] <= 1
                  and text[amounts[-1][1]:match.start()].strip() == "" and abs(value) < previous_big)
        if joined:
            start, _, before = amounts.pop()
            amounts.append((start, match.end(), before + math.copysign(value, before)))
            previous_big = big
            continue
        amounts.append((match.start(), match.end(), value))
        previous_big = big
    return amounts


def parse_number(text: str) -> float | None:
    """The single number written in ``text`` ("114,200", "３.５", "-2"), or None if there is not exactly one."""
    amounts = _amounts(normalize_text(text.strip()))
    return amounts[0][2] if len(amounts) == 1 else None


def _marker_pattern(lang: str | None) -> re.Pattern:
    languages = [lang, "en"] if lang else list(ANSWER_MARKERS)
    return re.compile("|".join(p for code in dict.fromkeys(languages) for p in ANSWER_MARKERS[code]), re.IGNORECASE)


def extract_answer(completion: str, lang: str | None = None) -> float | None:
    """The answer of a completion: the number after the final answer marker when present, else the last number.

    After the marker, the first number of its clause is taken (or of the next clause when the marker ends
    its own, as in "The answer is:\n\n42"); an equation ("The answer is 5 + 3 = 8.") gives the number after
    its last "=". ``lang`` picks the answer markers searched (that language's and English); None searches all.
    Returns None when the completion holds no number.
    """
    if lang is not None:
        check_language_code(lang)
    text = normalize_text(completion or "")
    markers = list(_marker_pattern(lang).finditer(text))
    if markers:
        clauses = [c for c in _CLAUSE_END.split(text[markers[-1].end():]) if c.strip(" :：\t*$")]
        for clause in clauses[:2]:
            found = _amounts(clause[clause.rindex("=") + 1:] if "=" in clause else clause)
            if found:
                return found[0][2]
    found = _amounts(text)
    return found[-1][2] if found else None


def answers_match(predicted: float | None, gold: float) -> bool:
    """True when an extracted answer equals the gold number (to 1e-6, so "18.00" matches 18)."""
    return predicted is not None and math.isclose(predicted, gold, rel_tol=1e-9, abs_tol=1e-6)


def parse_gold(text: str, where: str) -> float:
    """The gold answer of a data row as a number; ``where`` ("file:line") is named in the error."""
    value = parse_number(text)
    if value is None:
        raise CMAAMError(f"{where}: answer {text.strip()!r} is not a number")
    return value
