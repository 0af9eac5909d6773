"""Answer extraction on hand-written completions in ko, ja, zh and en, with exact expected values."""

import pytest

from cmaam.errors import CMAAMError
from eval.mgsm.extract import answers_match, extract_answer, normalize_text, parse_number
from eval_extraction_cases import CASES


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


def test_answer_marker_wins_over_last_number():
    assert extract_answer("The answer is 18. Earlier I had 25.") == 18
    assert extract_answer("I had 25 and ate 7, leaving 18.") == 18


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
