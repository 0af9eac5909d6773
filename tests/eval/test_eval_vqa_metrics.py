"""VQA metrics against hand-computed values."""

import unicodedata

import pytest

from eval.vqa import anls, exact_match, levenshtein, normalize_answer, relaxed_accuracy, vqa_soft_accuracy


@pytest.mark.parametrize("text,expected", [
    ("Yes.", "yes"), ("a red car", "red car"), ("Three", "3"), ("dont", "don't"), ("1,000", "1000"),
    ("3.5", "3.5"), ("hello-world", "hello world"), ("left - right", "left right"), ("What's up?", "what's up"),
    ("  The\tDog \n", "dog"), ("none", "0"),
])
def test_official_vqa_normalisation(text, expected):
    assert normalize_answer(text) == expected


def test_korean_normalisation():
    decomposed = unicodedata.normalize("NFD", "파란색")
    assert decomposed != "파란색" and normalize_answer(f"  {decomposed}. ", "ko") == "파란색"
    assert normalize_answer("빨간   사과!!", "ko") == "빨간 사과"
    assert normalize_answer("CPU입니다。", "ko") == "cpu입니다"
    assert exact_match("파란색.", "파란색", "ko") == 1.0
    assert exact_match("파란 색", "파란색", "ko") == 0.0


@pytest.mark.parametrize("matching,expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqav2_soft_accuracy_ten_answers(matching, expected):
    """k of 10 annotators agree: mean over the 10 leave-one-out subsets of min(matches/3, 1)."""
    answers = ["two"] * matching + ["three"] * (10 - matching)
    assert vqa_soft_accuracy("2", answers) == pytest.approx(expected)


def test_vqav2_soft_accuracy_with_normalisation_and_mixed_answers():
    answers = ["dog", "Dog.", "the dog", "puppy", "puppy", "cat", "animal", "dog ", "pet", "puppy"]
    # 4 answers normalise to "dog": every leave-one-out subset has >= 3 matches.
    assert vqa_soft_accuracy("A dog", answers) == pytest.approx(1.0)
    # 3 answers are "puppy": the 3 subsets leaving one out have 2 matches (2/3), the other 7 have 3 (1).
    assert vqa_soft_accuracy("puppy", answers) == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert vqa_soft_accuracy("cat", answers) == pytest.approx(9 * (1 / 3) / 10)
    assert vqa_soft_accuracy("cat", ["cat"]) == 1.0 and vqa_soft_accuracy("cat", []) == 0.0


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3 and levenshtein("abc", "abc") == 0


@pytest.mark.parametrize("prediction,references,expected", [
    ("hello world", "hello wrld", 1 - 1 / 11),
    ("Apple", "apple", 1.0),
    ("abc", "xyz", 0.0),
    ("abcd", "abxy", 0.0),            # NL = 0.5 is not below the threshold
    ("abcde", "abcxy", 0.6),           # NL = 0.4
    ("서울특별시", "서울시", 0.6),       # two deletions over five characters
    ("invoice 2019", ["invoice 2018", "receipt"], 1 - 1 / 12),
    ("  Total   Amount ", "total amount", 1.0),
    ("", "", 1.0),
])
def test_anls(prediction, references, expected):
    assert anls(prediction, references) == pytest.approx(expected)


@pytest.mark.parametrize("prediction,reference,expected", [
    ("104", "100", 1.0), ("106", "100", 0.0), ("95", "100", 1.0), ("94.9", "100", 0.0),
    ("1,050", "1000", 1.0), ("12%", "12.5%", 1.0), ("0.01", "0", 0.0), ("0", "0", 1.0),
    ("-51", "-50", 1.0), ("Yes", "yes.", 1.0), ("no", "yes", 0.0),
])
def test_relaxed_accuracy(prediction, reference, expected):
    assert relaxed_accuracy(prediction, reference) == expected


def test_exact_match_any_reference():
    assert exact_match("Two", ["3", "2"]) == 1.0 and exact_match("Two", ["3"]) == 0.0
