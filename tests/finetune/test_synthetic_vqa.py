"""Synthetic VQA: deterministic bytes, paired languages, stratified splits and answers that match the pixels."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cmaam.core.cli import run_cli
from cmaam.core.errors import CMAAMError
from eval.vqa import load_vqa_jsonl
from finetune.synthetic_vqa import COLOURS, SyntheticConfig, WORDS, answer_options, generate, main


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for split in ("train", "val", "test")
            for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return {lang: generate(SyntheticConfig(output=str(root / lang), n=60, lang=lang, seed=3), progress=False)
            for lang in ("en", "ko")}


def test_same_seed_same_bytes_and_other_seed_differs(pair, tmp_path):
    again = generate(SyntheticConfig(output=str(tmp_path / "again"), n=60, lang="ko", seed=3), progress=False)
    assert _digest(again) == _digest(pair["ko"])
    other = generate(SyntheticConfig(output=str(tmp_path / "other"), n=60, lang="ko", seed=4), progress=False)
    assert _digest(other)["train.jsonl"] != _digest(pair["ko"])["train.jsonl"]


def test_png_files_carry_no_metadata(pair):
    data = (pair["en"] / "images" / "000000.png").read_bytes()
    chunks, position = [], 8
    while position < len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        chunks.append(data[position + 4:position + 8].decode("ascii"))
        position += 12 + length
    assert set(chunks) == {"IHDR", "IDAT", "IEND"}
    assert Image.open(pair["en"] / "images" / "000000.png").size == (56, 56)


def test_languages_share_scenes_and_splits(pair):
    assert _digest(pair["en"] / "images") == _digest(pair["ko"] / "images")
    for split in ("train", "val", "test"):
        en = [json.loads(line) for line in (pair["en"] / f"{split}.jsonl").read_text().splitlines()]
        ko = [json.loads(line) for line in (pair["ko"] / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [(r["image"], r["task"], r["category"]) for r in en] == \
            [(r["image"], r["task"], r["category"]) for r in ko]
    for row_en, row_ko in zip(_rows(pair["en"]), _rows(pair["ko"])):
        key = next(k for k, word in WORDS["en"].items() if word == row_en["answer"] and k in _keys(row_en["task"]))
        assert row_ko["answer"] == WORDS["ko"][key]
        assert row_en["answer"] in answer_options(row_en["task"], "en")
        assert row_ko["lang"] == "ko" and row_en["lang"] == "en"


def _keys(task: str) -> tuple[str, ...]:
    from finetune.synthetic_vqa import TASKS

    return TASKS[task].answer_keys


def test_stratified_split_counts(pair):
    counts = json.loads((pair["ko"] / "counts.json").read_text(encoding="utf-8"))["categories"]
    # 60 samples over 6 tasks -> 10 per task; per task test round(1.0)=1, val 1, train 8.
    # general holds colour, shape and position.
    assert counts["general"] == {"train": 24, "val": 3, "test": 3, "total": 30}
    for category in ("visualization", "math_problem", "korean_problem"):
        assert counts[category] == {"train": 8, "val": 1, "test": 1, "total": 10}
    info = json.loads((pair["ko"] / "dataset_info.json").read_text(encoding="utf-8"))
    # chance = mean over tasks of 1/|answers|: (1/6 + 1/3 + 1/4 + 1/4 + 1/6 + 1/9) / 6 per split of equal tasks
    assert info["chance_accuracy"]["test"] == pytest.approx((1 / 6 + 1 / 3 + 1 / 4 + 1 / 4 + 1 / 6 + 1 / 9) / 6)
    assert len(load_vqa_jsonl(pair["ko"] / "test.jsonl")) == 6


def _ink(path: Path) -> np.ndarray:
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return pixels, (pixels.sum(axis=2) < 3 * 250)


def test_answers_match_the_pixels(pair):
    english = {row["id"].replace("-en-", "-"): row for row in _rows(pair["en"])}
    checked = set()
    for row in english.values():
        pixels, ink = _ink(pair["en"] / row["image"])
        if row["task"] == "colour":
            mean = pixels[ink].mean(axis=0)
            nearest = min(COLOURS, key=lambda name: np.abs(np.array(COLOURS[name]) - mean).sum())
            assert WORDS["en"][nearest] == row["answer"]
        elif row["task"] == "position":
            rows, columns = np.nonzero(ink)
            vertical = "top" if rows.mean() < 28 else "bottom"
            horizontal = "left" if columns.mean() < 28 else "right"
            assert row["answer"] == f"{vertical} {horizontal}"
        elif row["task"] == "count":
            quadrants = [ink[:28, :28], ink[:28, 28:], ink[28:, :28], ink[28:, 28:]]
            assert row["answer"] == str(sum(q.any() for q in quadrants))
        elif row["task"] == "bars":
            heights = [ink[:-5, :28].any(axis=1).sum(), ink[:-5, 28:].any(axis=1).sum()]
            half = pixels[:, :28] if heights[0] > heights[1] else pixels[:, 28:]
            column = half[:, half.shape[1] // 2]
            bar = column[(column.sum(axis=1) < 3 * 250) & (column.sum(axis=1) > 3 * 10)]
            nearest = min(COLOURS, key=lambda name: np.abs(np.array(COLOURS[name]) - bar.mean(axis=0)).sum())
            assert WORDS["en"][nearest] == row["answer"]
        else:
            continue
        checked.add(row["task"])
    assert checked == {"colour", "position", "count", "bars"}


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(CMAAMError, match="--n must be at least 1"):
        generate(SyntheticConfig(output=str(tmp_path / "x"), n=0))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--output", str(tmp_path / "y"), "--n", "10", "--image-size", "8"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --image-size must be at least 28 pixels, got 8\n"
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_extra_language_words_a_seeded_share_of_the_train_split_only(pair, tmp_path):
    mixed = generate(SyntheticConfig(output=str(tmp_path / "mixed"), n=600, lang="en", seed=3, extra_lang="ko",
                                     extra_share=0.25), progress=False)
    plain = generate(SyntheticConfig(output=str(tmp_path / "plain"), n=600, lang="en", seed=3), progress=False)
    rows = {split: [json.loads(line) for line in (mixed / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
            for split in ("train", "val", "test")}
    korean = [row for row in rows["train"] if row["lang"] == "ko"]
    assert 0.18 < len(korean) / len(rows["train"]) < 0.32  # a seeded 25 % share
    assert all(row["lang"] == "en" for split in ("val", "test") for row in rows[split])
    for row in korean:  # same scene, Korean wording and answer
        assert row["answer"] in answer_options(row["task"], "ko") and row["id"].startswith("synthetic-ko-")
    assert _digest(mixed / "images") == _digest(plain / "images")
    assert (mixed / "test.jsonl").read_bytes() == (plain / "test.jsonl").read_bytes()
    only = generate(SyntheticConfig(output=str(tmp_path / "only"), n=600, lang="en", seed=3, extra_lang="ko",
                                    extra_share=1.0, extra_tasks=("colour",)), progress=False)
    train = [json.loads(line) for line in (only / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {row["task"] for row in train if row["lang"] == "ko"} == {"colour"}
    assert all(row["lang"] == "ko" for row in train if row["task"] == "colour")


@pytest.mark.parametrize("changes, message", [
    ({"extra_share": 0.2}, "--extra-share needs --extra-lang"),
    ({"extra_lang": "en"}, "--extra-lang en is already --lang"),
    ({"extra_lang": "ko", "extra_share": 1.5}, "--extra-share must be in [0, 1]"),
    ({"extra_lang": "ko", "extra_share": 0.1, "tasks": ("colour",), "extra_tasks": ("digit",)}, "--extra-tasks"),
])
def test_bad_extra_language_settings(tmp_path, changes, message):
    with pytest.raises(CMAAMError, match=re.escape(message)):
        generate(SyntheticConfig(output=str(tmp_path / "x"), n=10, lang="en", **changes), progress=False)
    assert not (tmp_path / "x").exists()
