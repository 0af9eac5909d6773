"""Corpus preparation: both input formats, broken rows, a missing category, sizes, splits and errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cmaam.core.cli import run_cli
from cmaam.core.errors import CMAAMError
from eval.vqa import load_vqa_jsonl
from finetune.data import CATEGORIES
from finetune.data_prep import PrepConfig, allocate, main, parse_sizes, prepare


def _rows(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def _counts(folder: Path) -> dict:
    return json.loads((folder / "counts.json").read_text(encoding="utf-8"))


def test_full_mode_counts_every_valid_row(corpus, tmp_path):
    output = tmp_path / "prepared"
    prepare(PrepConfig(source=str(corpus), output=str(output), mode="full", val_fraction=0.1, test_fraction=0.2),
            progress=False)
    counts = _counts(output)
    table = counts["categories"]
    assert set(table) == set(CATEGORIES)  # all nine rows, absent categories included
    # general 10 valid: test round(2.0)=2, val round(1.0)=1; document 8: test round(1.6)=2, val round(0.8)=1;
    # math_problem 5: test round(1.0)=1, val round(0.5)=1 (half up)
    assert table["general"] == {"valid": 10, "broken": 2, "train": 7, "val": 1, "test": 2, "total": 10}
    assert table["document"] == {"valid": 8, "broken": 1, "train": 5, "val": 1, "test": 2, "total": 8}
    assert table["math_problem"] == {"valid": 5, "broken": 1, "train": 3, "val": 1, "test": 1, "total": 5}
    for missing in ("latex", "captioning", "visualization", "table_vqa", "arxiv", "korean_problem"):
        assert table[missing] == {"valid": 0, "broken": 0, "train": 0, "val": 0, "test": 0, "total": 0}
    assert counts["total"] == {"valid": 23, "broken": 4, "train": 15, "val": 3, "test": 5, "total": 23}
    assert counts["broken_reasons"] == {"image missing": 2, "image unreadable": 1, "malformed row": 1}
    assert [Path(p).name for p in counts["ignored_files"]] == ["notes.json"]
    assert "| **total** | 23 | 4 | 15 | 3 | 5 | 23 |" in (output / "counts.md").read_text(encoding="utf-8")
    split_rows = {split: _rows(output, split) for split in ("train", "val", "test")}
    ids = [row["id"] for rows in split_rows.values() for row in rows]
    assert len(ids) == len(set(ids)) == 23
    assert {"document/doc-0#0", "document/doc-0#1"} <= set(ids)  # a two-turn conversation gives two samples
    by_id = {row["id"]: row for rows in split_rows.values() for row in rows}
    assert by_id["document/doc-0#1"]["question"] == "And the year?"
    assert by_id["document/doc-0#0"]["question"] == "What is the title?"  # <image> token removed
    assert by_id["document/doc-0#0"]["lang"] == "en" and by_id["document/doc-3"]["lang"] == "ko"
    assert Path(by_id["document/doc-3"]["image"]) == (corpus / "images" / "03.png").resolve()
    # the agreed VQA JSONL format: eval's loader reads every split and finds every image
    assert len(load_vqa_jsonl(output / "test.jsonl")) == 5


def test_tiny_mode_with_size_override_is_stratified_and_seeded(corpus, tmp_path):
    config = dict(source=str(corpus), mode="tiny", sizes={"tiny": 20}, val_fraction=0.1, test_fraction=0.2)
    prepare(PrepConfig(output=str(tmp_path / "a"), **config), progress=False)
    table = _counts(tmp_path / "a")["categories"]
    # 20 of 23 proportionally: shares 8.70 / 6.96 / 4.35 -> floors 8/6/4, the two left over go to the largest
    # remainders (document .96, general .70): general 9, document 7, math_problem 4.
    assert {c: table[c]["total"] for c in ("general", "document", "math_problem")} == \
        {"general": 9, "document": 7, "math_problem": 4}
    assert (table["general"]["train"], table["general"]["val"], table["general"]["test"]) == (6, 1, 2)
    assert (table["document"]["train"], table["document"]["val"], table["document"]["test"]) == (5, 1, 1)
    assert (table["math_problem"]["train"], table["math_problem"]["val"], table["math_problem"]["test"]) == (3, 0, 1)
    prepare(PrepConfig(output=str(tmp_path / "b"), **config), progress=False)
    prepare(PrepConfig(output=str(tmp_path / "c"), seed=1, **config), progress=False)
    for split in ("train", "val", "test"):
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    assert _rows(tmp_path / "a", "train") != _rows(tmp_path / "c", "train")


def test_category_caps_and_copied_images(corpus, tmp_path):
    output = tmp_path / "copied"
    prepare(PrepConfig(source=str(corpus), output=str(output), mode="full", sizes={"general": 3},
                       val_fraction=0.0, test_fraction=0.0, copy_images=True), progress=False)
    table = _counts(output)["categories"]
    assert (table["general"]["train"], table["document"]["train"], table["math_problem"]["train"]) == (3, 8, 5)
    rows = _rows(output, "train")
    assert all(not Path(row["image"]).is_absolute() and (output / row["image"]).is_file() for row in rows)
    assert len(load_vqa_jsonl(output / "train.jsonl")) == 16


def test_allocate_redistributes_what_small_categories_cannot_take():
    assert allocate({"a": 100, "b": 2}, 10, {}) == {"a": 10, "b": 0}  # shares 9.80 / 0.20
    # b's share (10) exceeds its cap 3; the other 17 are shared 5:45 -> 1.7 / 15.3 -> 2 / 15
    assert allocate({"a": 5, "b": 50, "c": 45}, 20, {"b": 3}) == {"a": 2, "b": 3, "c": 15}
    assert allocate({"a": 1, "b": 50, "c": 49}, 50, {}) == {"a": 1, "b": 25, "c": 24}
    assert allocate({"a": 5, "b": 6}, None, {}) == {"a": 5, "b": 6}
    assert sum(allocate({"a": 333, "b": 333, "c": 334}, 100, {}).values()) == 100


def test_parse_sizes():
    assert parse_sizes(["tiny=5000", "general=20"]) == {"tiny": 5000, "general": 20}
    with pytest.raises(CMAAMError, match="mode .* or a category"):
        parse_sizes(["huge=5"])
    with pytest.raises(CMAAMError, match="positive integer"):
        parse_sizes(["tiny=-3"])


@pytest.mark.parametrize("make_source, message", [
    (lambda root: root / "nope", "source folder not found"),
    (lambda root: (root / "empty").mkdir() or root / "empty", "no recognised data files"),
])
def test_bad_source_is_one_line_error(tmp_path, capsys, make_source, message):
    source = make_source(tmp_path)
    (tmp_path / "other.json").write_text("[]")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--source", str(source), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_existing_output_is_kept(corpus, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    with pytest.raises(CMAAMError, match="already exists"):
        prepare(PrepConfig(source=str(corpus), output=str(output)), progress=False)
    assert (output / "keep.txt").read_text() == "mine"


def test_script_runs_as_documented(corpus, tmp_path):
    script = Path(__file__).resolve().parents[2] / "scripts" / "prepare_korean_vqa_data.py"
    result = subprocess.run([sys.executable, str(script), "--source", str(corpus), "--output", str(tmp_path / "o"),
                             "--mode", "tiny", "--seed", "0", "--check-images", "exists"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "| general | 11 | 1 |" in result.stdout  # 'exists' does not open files: the unreadable one passes
    assert "broken rows: image missing 2, malformed row 1" in result.stdout


def test_repeated_ids_stay_distinct_and_multi_image_rows_are_broken(tmp_path):
    from PIL import Image

    source = tmp_path / "src"
    source.mkdir()
    Image.new("RGB", (4, 4)).save(source / "a.png")
    row = {"id": "1", "image": "a.png", "question": "q", "answer": "a"}
    (source / "table_vqa_a.jsonl").write_text(json.dumps(row) + "\n")
    (source / "table_vqa_b.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({**row, "image": ["a.png"]}) + "\n")
    summary = prepare(PrepConfig(source=str(source), output=str(tmp_path / "out"), mode="full",
                                 val_fraction=0, test_fraction=0), progress=False)
    assert sorted(r["id"] for r in _rows(tmp_path / "out", "train")) == ["table_vqa/1", "table_vqa/1~1"]
    assert summary["broken_reasons"] == {"several images": 1}
