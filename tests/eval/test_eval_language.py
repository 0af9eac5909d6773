"""Script-ratio language checks."""

import pytest

from cmaam.core.errors import CMAAMError
from eval.language import is_language, language_ratio, script_counts


def test_script_counts_ignore_digits_and_punctuation():
    assert script_counts("답은 18입니다. OK!") == {"hangul": 5, "kana": 0, "han": 0, "latin": 2, "other": 0}


@pytest.mark.parametrize("text,lang,ratio", [
    ("정답은 18입니다", "ko", 1.0),
    ("答えは18です", "ja", 1.0),
    ("答案是18", "zh", 1.0),
    ("The answer is 18", "en", 1.0),
    ("정답 is", "ko", 0.5),
    ("18", "en", 0.0),
    ("答えはabcです", "ja", 5 / 8),
])
def test_language_ratio(text, lang, ratio):
    assert language_ratio(text, lang) == pytest.approx(ratio)


def test_thresholds_and_japanese_needs_kana():
    assert is_language("정답 is", "ko", 0.5) and not is_language("정답 is", "ko", 0.51)
    assert is_language("答案是十八", "zh") and not is_language("答案是十八", "ja")
    assert not is_language("", "en")
    with pytest.raises(CMAAMError, match="threshold"):
        is_language("x", "en", 1.5)
    with pytest.raises(CMAAMError, match="unknown language"):
        language_ratio("x", "fr")
