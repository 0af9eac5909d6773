"""Answer extraction on hand-written completions in ko, ja, zh and en, with exact expected values."""

import pytest

from cmaam.core.errors import CMAAMError
from eval.mgsm.extract import answers_match, extract_answer, normalize_text, parse_number
from eval_extraction_cases import CASES, CLASSES


@pytest.mark.parametrize("lang", sorted(CASES))
def test_at_least_forty_cases_per_language(lang):
    assert len(CASES[lang]) >= 40
    assert any(expected is None for _, expected in CASES[lang])


@pytest.mark.parametrize("lang,completion,expected",
                         [(lang, text, value) for lang, cases in sorted(CASES.items()) for text, value in cases])
def test_extract_answer(lang, completion, expected):
    assert extract_answer(completion, lang) == expected


@pytest.mark.parametrize("lang,completion,expected",
                         [(lang, text, value) for lang, cases in sorted(CASES.items()) for text, value in cases])
def test_extract_answer_without_language(lang, completion, expected):
    """All markers are searched when the language is not given; the figures do not change."""
    assert extract_answer(completion) == expected


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_each_fixed_class_has_four_cases_per_language(name):
    """Every language a class applies to has at least 4 hand-written cases of it (and all are in CASES)."""
    for lang, cases in CLASSES[name].items():
        assert len(cases) >= 4 and all(case in CASES[lang] for case in cases)


@pytest.mark.parametrize("completion,expected", [
    # formatting and qualifiers may stand between a marker and its number
    (r"The answer is $\boxed{18}$. It took 3 days.", 18),
    (r"**Final Answer:** \(72\) after 2 steps", 72),
    ("Answer: **18** after 7 days", 18),
    ("Final answer\n\n18\n\nThat took 3 steps.", 18),
    ("The answer is approximately 3.5 hours, or 210 minutes.", 3.5),
    ("答えは「18」です。7日かかります。", 18),
    ("答えは、合計で18個です。7日", 18),
    ("答案是：约18个。用了7天。", 18),
    ("정답은 약 18개입니다. 7일 걸립니다.", 18),
    # any other word means the marker does not state the answer: the last number
    ("The answer isn't 7, it's 8.", 8),
    ("The answer is not obvious: 3 + 4 = 7 days.", 7),
    ("答えは分かりません。3日", 3),
    ("정답이 아닙니다. 다시 계산하면 5입니다.", 5),
    # an earlier answer statement wins over a later marker that introduces working
    ("The answer is 12. Let me verify the answer: she has 3 boxes of 4, and 3 * 4 = 12, over 2 days.", 12),
])
def test_what_may_follow_a_marker(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize("text,expected", [("7만큼", 7), ("7 만큼", 7), ("4만치", 4), ("3천만큼", 3000),
                                           ("7만", 70000), ("7만 원", 70000), ("7만원", 70000), ("3만에", 30000),
                                           ("5만의", 50000), ("5만이", 50000), ("1억 2천만", 120000000)])
def test_korean_man_is_a_multiplier_only_as_a_whole_word(text, expected):
    assert parse_number(text) == expected


def test_answer_marker_wins_over_last_number():
    assert extract_answer("The answer is 18. Earlier I had 25.") == 18
    assert extract_answer("I had 25 and ate 7, leaving 18.") == 18


def test_digits_of_other_scripts_are_numbers():
    """Random or multilingual output can hold Arabic-Indic or Thai digits; they are read, never a crash."""
    assert extract_answer("٣ apples") == 3 and extract_answer("The answer is ๔๒") == 42
    assert normalize_text("١٢٣") == "123"


def test_full_width_comma_between_clauses_is_not_a_separator():
    assert normalize_text("5，100") == "5、100"
    assert normalize_text("１，０００") == "1,000"


def test_parse_number_and_match():
    assert parse_number("114,200") == 114200
    assert parse_number("３.５") == 3.5
    assert parse_number("12 apples and 3 pears") is None
    assert answers_match(18.0000001, 18) and not answers_match(18.01, 18) and not answers_match(None, 0)


def test_unknown_language_is_an_error():
    with pytest.raises(CMAAMError, match="unknown language 'xx'"):
        extract_answer("The answer is 3", "xx")
