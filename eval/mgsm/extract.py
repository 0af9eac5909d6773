"""Answer extraction for math word problems: the number the last answer statement gives, else the last number.

Handles thousands separators ("1,000", "1 000"), decimals, negatives, full-width digits, trailing units
and East Asian multipliers written after digits ("7万" = 70000, "3만 5000" = 35000).
"""

from __future__ import annotations

import math
import re
import unicodedata

from cmaam.core.errors import CMAAMError
from eval.language import check_language_code

# An answer marker is the word "answer" (or "correct answer", 答え, 正解, 答案, 정답, 답, ...) followed by a copula,
# a topic/subject particle or a colon: the sentence that states the answer. What may stand between it and the
# number is limited to ANSWER_FILLER and QUALIFIERS (see extract_answer).
_EN_COPULA = r"(?:is|was|will be|would be|should be|must be|equals)\b"
ANSWER_MARKERS = {
    "en": (r"\b(?:final )?answer(?: to (?:the|this|that) (?:question|problem))?\s*(?:" + _EN_COPULA + r"|[:：=])",
           r"\bfinal answer\b"),
    "ja": (r"(?:答え|正解|正答|解答|答)\s*(?:は|が|[:：=])",),
    "zh": (r"答案\s*(?:应该是|应该为|应是|应为|就是|即为|即是|等于|为|為|是|[:：=])", r"答\s*[:：=]"),
    "ko": (r"(?:정답|해답|(?<![가-힣])답)\s*(?:은|는|이|[:：=])",),
}
# Formatting and punctuation between a marker and its number: spaces, colons, equals/approx signs, Markdown,
# quotes, brackets, currency signs, LaTeX commands ("\boxed{", "\(").
ANSWER_FILLER = r"""[\s:：=≈~*_`#$€£¥₩"'“”‘’「」『』()\[\]{}（）【】、,，]|\\[A-Za-z]+|\\[()\[\]]"""
# Words that qualify the number or connect it to the sentence without being the working (closed lists).
QUALIFIERS = {
    "en": r"(?:approximately|about|around|roughly|nearly|almost|exactly|just|simply|therefore|thus|hence|then|so|"
          r"now|indeed|clearly|still|equal to|a total of|in total|total)\b",
    "ja": r"(?:約|およそ|ちょうど|合計で|合計|全部で|計|つまり|結局|やはり)",
    "zh": r"(?:大约|约|大概|一共|总共|总计|合计|共)",
    "ko": r"(?:약|대략|총|모두|전부|합계|합쳐서|바로|정확히|즉|결국)(?![가-힣])",
}
_NUMBER = (r"(?<![0-9A-Za-z.])(?P<sign>-)?(?P<integer>\d{1,3}(?:[,\u00a0\u202f\u2009 ]\d{3})+(?![0-9])|\d+)"
           r"(?P<fraction>\.\d+)?")
# A multiplier after digits is a number word only when it is a whole word: 만 that begins 만큼/만치 ("as much
# as") or 만약 ("if") is another word, so "7만큼" is 7. 千/천 before a measure word (千克 kg, 千米 km, ...) is a prefix.
_AMOUNT = re.compile(_NUMBER + r"(?:[ ]?(?P<thousand>[千천])(?![克米瓦卡]))?"
                               r"(?:[ ]?(?P<big>[万萬億亿억]|만(?![큼치약])))?")
_MULTIPLIERS = {"千": 1e3, "천": 1e3, "万": 1e4, "萬": 1e4, "만": 1e4, "億": 1e8, "亿": 1e8, "억": 1e8}
# A bracketed aside after the stated number explains it and states nothing: "18 (= 9 × 2)" is 18.
_ASIDE = re.compile(r"[(（][^()（）]*[)）]")
_CLAUSE_END = re.compile(r"[\n。!?！？]|\.(?!\d)")
_SUPERSCRIPTS = str.maketrans({c: " " for c in "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻"})
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2012": "-", "\u2013": "-", "\ufe63": "-", "\uff0d": "-"})
_OTHER_DIGITS = re.compile(r"(?![0-9])\d")
_FULLWIDTH_COMMA = re.compile(r"，(?![０-９])|(?<![０-９])，")


def normalize_text(text: str) -> str:
    """NFKC (full-width digits and signs to ASCII) with minus signs unified and clause commas kept apart.

    A full-width comma is a thousands separator only between full-width digits ("１，０００");
    elsewhere it separates clauses and becomes "、" so that "5，100" is not read as 5100. Decimal digits of
    other scripts, which NFKC keeps ("٣", "๔"), become ASCII digits too.
    """
    text = _FULLWIDTH_COMMA.sub("、", text.translate(_SUPERSCRIPTS))
    text = unicodedata.normalize("NFKC", text).translate(_MINUS_SIGNS)
    text = _OTHER_DIGITS.sub(lambda digit: str(unicodedata.decimal(digit.group())), text)
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


def _languages(lang: str | None) -> list[str]:
    return list(dict.fromkeys([lang, "en"])) if lang else list(ANSWER_MARKERS)


def _marker_pattern(lang: str | None) -> re.Pattern:
    return re.compile("|".join(p for code in _languages(lang) for p in ANSWER_MARKERS[code]), re.IGNORECASE)


def _filler_pattern(lang: str | None) -> re.Pattern:
    qualifiers = "|".join(QUALIFIERS[code] for code in _languages(lang))
    return re.compile(f"(?:{ANSWER_FILLER}|{qualifiers})*", re.IGNORECASE)


def _stated_answer(text: str, position: int, filler: re.Pattern) -> float | None:
    """The number a marker ending at ``position`` states, or None when the marker introduces working instead.

    Only formatting and qualifiers may stand between the marker and its number; when the number starts an
    equation in its clause ("5 + 3 = 8"), the number after the clause's last "=" is the answer.
    """
    start = filler.match(text, position).end()
    clause_end = _CLAUSE_END.search(text, start)
    clause = text[start:clause_end.start() if clause_end else len(text)]
    found = _amounts(clause)
    if not found or found[0][0] != 0:
        return None
    clause = _ASIDE.sub(" ", clause)
    if "=" in clause:
        result = _amounts(clause[clause.rindex("=") + 1:])
        if result:
            return result[0][2]
    return found[0][2]


def extract_answer(completion: str, lang: str | None = None) -> float | None:
    """The answer of a completion: the number the last answer statement gives, else the last number.

    An answer statement is a marker ("The answer is", "答えは", "答案是", "정답은", ...) directly followed by its
    number: only formatting (spaces, colons, Markdown, currency signs, LaTeX) and qualifiers ("approximately",
    "a total of", "約", "共", "총") may stand between. A marker followed by other words introduces the working
    ("The answer is calculated as follows: ...") and states nothing. An equation after the marker
    ("The answer is 5 + 3 = 8.") gives the number after its last "=", unless that "=" stands in a bracketed
    aside ("The answer is 18 (= 9 × 2)." gives 18). ``lang`` picks the markers and qualifiers
    searched (that language's and English); None searches all. Returns None when the completion holds no number.
    """
    if lang is not None:
        check_language_code(lang)
    text = normalize_text(completion or "")
    filler = _filler_pattern(lang)
    for marker in reversed(list(_marker_pattern(lang).finditer(text))):
        stated = _stated_answer(text, marker.end(), filler)
        if stated is not None:
            return stated
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
