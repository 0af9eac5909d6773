"""MGSM data loading, prompts and scoring on the real MGSM gold answers."""

import random
from pathlib import Path

import pytest

from cmaam.core.errors import CMAAMError
from eval.mgsm import MAX_SHOTS, MGSMItem, build_messages, evaluate_mgsm, load_mgsm, score_mgsm
from eval.mgsm.data import BUNDLED_DIR

SHARED = Path("/work/shared/data/mgsm")
ANSWER_FORMATS = {"en": "Let me work it out step by step: 2 + 3 = 5. The answer is {}.",
                  "ja": "順に計算します：2 + 3 = 5。答えは{}です。",
                  "zh": "逐步计算：2 + 3 = 5。答案是{}。"}


def raw_answers(lang):
    """The gold answers exactly as written in the TSV (e.g. '114,200'), read without the project's parser."""
    lines = (BUNDLED_DIR / f"mgsm_{lang}.tsv").read_text(encoding="utf-8").splitlines()
    return [line.split("\t")[1] for line in lines]


@pytest.mark.parametrize("lang", ["en", "ja", "zh"])
def test_bundled_data_matches_shared_copy(lang):
    items = load_mgsm(lang)
    assert len(items) == 250 and [i.index for i in items] == list(range(250))
    if SHARED.exists():
        assert (BUNDLED_DIR / f"mgsm_{lang}.tsv").read_bytes() == (SHARED / f"mgsm_{lang}.tsv").read_bytes()


@pytest.mark.parametrize("lang", ["en", "ja", "zh"])
def test_gold_answers_as_completions_score_one(lang):
    items = load_mgsm(lang)
    completions = [ANSWER_FORMATS[lang].format(raw) for raw in raw_answers(lang)]
    result = score_mgsm(completions, items, lang)
    assert result.metrics["accuracy"] == 1.0
    assert result.metrics["accuracy_with_language_check"] == 1.0
    assert result.metrics["count"] == 250 and result.metrics["no_answer_rate"] == 0.0


@pytest.mark.parametrize("lang", ["en", "ja", "zh"])
def test_shuffled_answers_score_the_matching_fraction(lang):
    items = load_mgsm(lang)
    raw = raw_answers(lang)
    shuffled = raw[:]
    random.Random(1234).shuffle(shuffled)
    expected = sum(a.replace(",", "") == b.replace(",", "") for a, b in zip(shuffled, raw)) / len(raw)
    assert 0.0 < expected < 0.2  # shuffling keeps some coincidences (small answers repeat) but few
    result = score_mgsm([ANSWER_FORMATS[lang].format(a) for a in shuffled], items, lang)
    assert result.metrics["accuracy"] == pytest.approx(expected, abs=1e-12)


def test_language_check_rejects_answers_in_another_language():
    items = load_mgsm("ja", limit=4)
    english = [f"The answer is {int(item.answer)}." for item in items]
    result = score_mgsm(english, items, "ja")
    assert result.metrics["accuracy"] == 1.0
    assert result.metrics["accuracy_with_language_check"] == 0.0
    assert result.metrics["language_match_rate"] == 0.0
    loose = score_mgsm(english, items, "ja", language_check_threshold=0.0)
    assert loose.metrics["accuracy_with_language_check"] == 0.0  # Japanese needs kana


def test_user_tsv_korean_with_limit(tmp_path):
    path = tmp_path / "mgsm_ko.tsv"
    path.write_text("사과가 3개 있습니다. 2개를 더 사면 몇 개입니까?\t5\n\n연필 1,200자루의 절반은?\t600\n"
                    "세 번째 질문\t1,000\n", encoding="utf-8")
    items = load_mgsm(path, lang="ko")
    assert items == [MGSMItem("사과가 3개 있습니다. 2개를 더 사면 몇 개입니까?", 5.0, 0),
                     MGSMItem("연필 1,200자루의 절반은?", 600.0, 1), MGSMItem("세 번째 질문", 1000.0, 2)]
    assert len(load_mgsm(path, limit=2)) == 2


def test_datasets_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"question": ["q0"], "answer_number": [1]}),
                 "test": Dataset.from_dict({"question": ["q1", "q2"], "answer_number": [18, 3]})}
                ).save_to_disk(str(tmp_path / "mgsm"))
    items = load_mgsm(tmp_path / "mgsm")
    assert [(i.question, i.answer) for i in items] == [("q1", 18.0), ("q2", 3.0)]


@pytest.mark.parametrize("content,line,message", [
    ("q1\t1\nq2 without a tab\nq3\t3\n", 2, "expected 2 tab-separated columns, found 1"),
    ("q1\t1\nq2\t2\nq3\tabc\n", 3, "answer 'abc' is not a number"),
    ("q1\t1\t1\n", 1, "found 3"),
])
def test_malformed_tsv_names_the_line(tmp_path, content, line, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CMAAMError, match=f":{line}: .*{message}"):
        load_mgsm(path)


def test_bad_sources(tmp_path):
    with pytest.raises(CMAAMError, match="data file not found"):
        load_mgsm(tmp_path / "missing.tsv")
    with pytest.raises(CMAAMError, match="no bundled 'ko' split"):
        load_mgsm("ko")
    with pytest.raises(CMAAMError, match="unknown language 'xx'"):
        load_mgsm(None, lang="xx")


@pytest.mark.parametrize("lang,marker", [("en", "The answer is 27."), ("ja", "答えは27です。"), ("zh", "答案是27。"),
                                         ("ko", "정답은 27입니다.")])
def test_few_shot_messages(lang, marker):
    messages = build_messages("Q?", lang, shots=3)
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3 + ["user"]
    assert messages[1]["content"].endswith(marker)
    assert messages[-1]["content"].endswith("Q?")
    direct = build_messages("Q?", lang, shots=1, chain_of_thought=False)
    assert direct[1]["content"] == marker and direct[0]["content"] != messages[0]["content"]
    assert build_messages("Q?", lang) == messages[-1:]


def test_shots_out_of_range():
    with pytest.raises(CMAAMError, match=f"between 0 and {MAX_SHOTS}"):
        build_messages("Q?", "en", shots=MAX_SHOTS + 1)


def test_evaluate_with_any_generator():
    """evaluate_mgsm works with a duck-typed generator and records prompts and extractions."""
    items = load_mgsm("zh", limit=3)

    class Echo:
        def __init__(self):
            self.requests = []

        def generate(self, requests):
            self.requests = list(requests)
            return [f"答案是{int(items[0].answer)}。"] * len(requests)

    generator = Echo()
    result = evaluate_mgsm(generator, items, "zh", shots=2)
    assert len(generator.requests) == 3 and len(generator.requests[0].history) == 4
    expected = sum(item.answer == items[0].answer for item in items) / 3
    assert result.metrics["accuracy"] == pytest.approx(expected)
    assert result.samples[0]["extracted"] == items[0].answer and result.samples[0]["correct"] is True
    assert result.samples[0]["prompt"].startswith("请逐步解答")
