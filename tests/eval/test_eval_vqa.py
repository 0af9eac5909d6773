"""VQA JSONL loading (line-numbered errors) and scoring per category."""

import json

import pytest

from cmaam.core.errors import CMAAMError
from eval.vqa import evaluate_vqa, load_vqa_jsonl, score_vqa


def test_load_resolves_images_and_defaults(vqa_folder):
    items = load_vqa_jsonl(vqa_folder)
    assert [i.id for i in items] == ["q1", "q2", "q3"]
    assert items[0].image == str(vqa_folder.parent / "images" / "red.png")
    assert items[0].answers == tuple(["red"] * 9 + ["crimson"])
    assert items[1].lang == "ko" and items[2].image is None and items[2].answers is None
    assert len(load_vqa_jsonl(vqa_folder, limit=2)) == 2


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("second_line,message", [
    ('{"id": "b", "question": "q", "answer": ', r":2: invalid JSON"),
    ('["not", "an", "object"]', r":2: expected a JSON object"),
    ('{"id": "b", "answer": "x", "image": null}', r":2: field 'question' must be a non-empty string"),
    ('{"id": "b", "question": "q", "image": null}', r":2: field 'answer' must be"),
    ('{"id": "b", "question": "q", "answer": "x", "image": "images/missing.png"}', r":2: image images/missing.png"),
    ('{"id": "a", "question": "q", "answer": "x", "image": null}', r":2: duplicate id 'a' \(first on line 1\)"),
    ('{"id": "b", "question": "q", "answer": "x", "image": null, "lang": "fr"}', r":2: unknown language 'fr'"),
    ('{"id": "b", "question": "q", "answers": [], "image": null}', r":2: field 'answers' must be a non-empty list"),
])
def test_bad_lines_are_reported_with_their_number(tmp_path, second_line, message):
    path = write(tmp_path / "bad.jsonl", ['{"id": "a", "question": "q", "answer": "x", "image": null}', second_line])
    with pytest.raises(CMAAMError, match=message):
        load_vqa_jsonl(path)


def test_answer_defaults_to_most_common_of_answers(tmp_path):
    record = {"id": "a", "image": None, "question": "q", "answers": ["cat", "dog", "dog"]}
    path = write(tmp_path / "a.jsonl", [json.dumps(record)])
    assert load_vqa_jsonl(path)[0].answer == "dog"


def test_missing_file(tmp_path):
    with pytest.raises(CMAAMError, match="data file not found"):
        load_vqa_jsonl(tmp_path / "nothing.jsonl")


def test_scores_overall_and_per_category(vqa_folder):
    items = load_vqa_jsonl(vqa_folder)
    result = score_vqa(["Crimson", "파란색.", "four"], items)
    metrics = result.metrics
    # q1: 1 of 10 annotators said crimson -> 0.3; exact match against "red" fails; ANLS max over the 10 answers = 1.
    assert metrics["category/color/vqa_accuracy"] == pytest.approx(0.3)
    assert metrics["category/color/exact_match"] == 0.0 and metrics["category/color/anls"] == 1.0
    assert metrics["category/색상/exact_match"] == 1.0
    assert metrics["category/count/exact_match"] == 1.0 and metrics["category/count/relaxed_accuracy"] == 1.0
    assert metrics["exact_match"] == pytest.approx(2 / 3)
    assert metrics["vqa_accuracy"] == pytest.approx((0.3 + 1 + 1) / 3)
    assert metrics["count"] == 3 and metrics["category/color/count"] == 1
    assert [s["correct"] for s in result.samples] == [False, True, True]
    assert result.samples[2]["extracted"] == "4" and result.samples[2]["gold"] == "4"


def test_evaluate_sets_max_new_tokens_for_the_call(vqa_folder):
    class Recorder:
        max_new_tokens = 512

        def generate(self, requests):
            self.seen = (self.max_new_tokens, [r.image for r in requests], [r.text for r in requests])
            return ["red", "파란색", "4"]

    generator = Recorder()
    result = evaluate_vqa(generator, load_vqa_jsonl(vqa_folder), max_new_tokens=16)
    assert generator.seen[0] == 16 and generator.max_new_tokens == 512
    assert generator.seen[1][0].endswith("red.png") and generator.seen[1][2] is None
    assert generator.seen[2][1].endswith("한 단어나 짧은 구로 답하세요.")
    assert result.metrics["exact_match"] == 1.0
