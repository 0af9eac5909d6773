"""Disperse-Then-Merge: deterministic splits (category balance by hand, k-means on known blobs), the merge against
hand-computed averages, one-line errors, and a tiny end-to-end run that resumes without retraining."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cmaam.core.cli import run_cli
from cmaam.core.errors import CMAAMError
from cmaam.io import CheckpointReader
from finetune.dtm import DTMConfig, kmeans, main, merge_submodels, split_by_category, write_parts

LORA = ["--max-steps", "2", "--batch-size", "8", "--grad-accum", "1", "--lr", "5e-3", "--lora-rank", "4",
        "--lora-alpha", "8", "--lora-dropout", "0", "--warmup", "0", "--threads", "1", "--no-progress"]


def test_category_split_keeps_categories_whole_and_balances_sizes():
    records = [{"category": c} for c in ["a"] * 5 + ["b"] * 3 + ["c"] * 3 + ["d"] * 2 + ["e"]]
    labels = split_by_category(records, 3)
    # largest first to the smallest part: a -> 0, b -> 1, c -> 2, d -> 1 (3 + 2 = 5), e -> 2 (3 + 1 = 4)
    assert labels == [0] * 5 + [1] * 3 + [2] * 3 + [1] * 2 + [2]
    assert split_by_category(list(reversed(records)), 3) == list(reversed(labels))  # order does not matter
    with pytest.raises(CMAAMError, match="only 5 category value\\(s\\)"):
        split_by_category(records, 6)
    with pytest.raises(CMAAMError, match="--category-field 'task'"):
        split_by_category(records, 2, "task")


def test_kmeans_recovers_separated_blobs_and_is_seeded():
    generator = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]])
    points = np.concatenate([centre + generator.normal(0, 0.5, (20, 2)) for centre in centres])
    truth = np.repeat([0, 1, 2], 20)
    for seed in (0, 1, 2):
        labels = kmeans(points, 3, seed=seed)
        mapping = {int(labels[truth == k][0]) for k in range(3)}
        assert len(mapping) == 3 and all(len(set(labels[truth == k])) == 1 for k in range(3))
    assert np.array_equal(kmeans(points + 0.3, 3, seed=4), kmeans(points + 0.3, 3, seed=4))


@pytest.fixture(scope="module")
def synthetic_ko(tmp_path_factory) -> Path:
    from finetune.synthetic_vqa import SyntheticConfig, generate

    return generate(SyntheticConfig(output=str(tmp_path_factory.mktemp("data") / "syn_ko"), n=60, lang="ko"),
                    progress=False)


@pytest.mark.parametrize("split, field", [("category", "task"), ("cluster", "category")])
def test_parts_are_deterministic_cover_the_training_set_and_load(tiny_qwen2vl, synthetic_ko, tmp_path, split, field):
    from eval.vqa import load_vqa_jsonl

    folders = []
    for name in ("first", "second"):
        config = DTMConfig(model=str(tiny_qwen2vl), data=str(synthetic_ko), output=str(tmp_path / name), parts=3,
                           split=split, category_field=field, seed=7)
        folders.append(write_parts(config))
    for first, second in zip(*folders):
        assert (first / "train.jsonl").read_bytes() == (second / "train.jsonl").read_bytes()
    ids = [item.id for part in folders[0] for item in load_vqa_jsonl(part / "train.jsonl")]  # images resolve
    train = [json.loads(line)["id"] for line in (synthetic_ko / "train.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(train) and all(len(load_vqa_jsonl(p / "train.jsonl")) > 0 for p in folders[0])
    summary = json.loads((tmp_path / "first" / "parts" / "parts.json").read_text())
    assert summary["split"] == split and sum(p["samples"] for p in summary["parts"]) == len(train)
    if split == "category":  # six tasks of 8 training samples: two whole tasks per part
        assert [p["samples"] for p in summary["parts"]] == [16, 16, 16]
        assert all(len(p["task"]) == 2 for p in summary["parts"])


def test_soup_and_task_arithmetic_at_one_over_k_are_the_average(tiny_llama, tmp_path):
    from cmaam.testing.tiny import perturb_model

    subs = [perturb_model(tiny_llama, tmp_path / f"sub{k}", 0.2, seed=k + 1) for k in range(3)]
    soup = merge_submodels(DTMConfig(model=str(tiny_llama), data="", output=str(tmp_path)), subs, tmp_path / "soup")
    arithmetic = merge_submodels(DTMConfig(model=str(tiny_llama), data="", output=str(tmp_path),
                                           merge="task_arithmetic"), subs, tmp_path / "ta")
    readers = [CheckpointReader(path) for path in subs]
    with CheckpointReader(soup) as s, CheckpointReader(arithmetic) as t:
        for name in s.keys():
            mean = sum(r.get(name).double() for r in readers) / 3
            assert torch.allclose(s.get(name).double(), mean, atol=1e-6), name
            assert torch.allclose(t.get(name).double(), mean, atol=1e-6), name


@pytest.mark.parametrize("extra, message", [
    (["--parts", "1"], "--parts must be a whole number of at least 2"),
    (["--merge", "average"], "unknown merge method 'average'"),
    (["--retention", "/nonexistent"], "no test.jsonl for the retention set"),
    (["--merge-parameter", "density"], "expected KEY=VALUE"),
    (["--merge-weight", "1"], "apply to a merge method, not the soup"),
])
def test_bad_arguments_are_one_line_errors(tiny_qwen2vl, synthetic_ko, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_code:
        run_cli(main, ["--model", str(tiny_qwen2vl), "--data", str(synthetic_ko), "--output", str(tmp_path / "out"),
                       *extra])
    stderr = capsys.readouterr().err.strip()
    assert exit_code.value.code == 2 and message in stderr and "Traceback" not in stderr
    assert len([line for line in stderr.splitlines() if line.startswith("error: ")]) == 1
    assert not (tmp_path / "out").exists()


def test_a_tiny_dtm_run_writes_the_table_and_a_rerun_trains_nothing(tiny_qwen2vl, synthetic_ko, tmp_path, capsys):
    arguments = ["--model", str(tiny_qwen2vl), "--data", str(synthetic_ko), "--output", str(tmp_path / "dtm"),
                 "--parts", "2", "--category-field", "task", "--eval-limit", "4", "--max-new-tokens", "4",
                 "--no-progress", *LORA]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "dtm" / "dtm.json").read_text())
    assert [row["model"] for row in report["rows"]] == ["base", "part_0", "part_1", "dtm_soup", "single"]
    assert all(0 <= row["metrics"]["target/exact_match"] <= 1 for row in report["rows"])
    assert [row["train_samples"] for row in report["rows"]] == [0, 24, 24, 48, 48]
    assert "| dtm_soup | DTM merge | 48 |" in printed and (tmp_path / "dtm" / "dtm.png").read_bytes()[:4] == b"\x89PNG"
    stamps = {path: path.stat().st_mtime_ns for path in (tmp_path / "dtm").rglob("train_result.json")}
    assert len(stamps) == 3
    assert main(arguments) == 0  # everything is already there: nothing is retrained, merged or re-evaluated
    assert stamps == {path: path.stat().st_mtime_ns for path in (tmp_path / "dtm").rglob("train_result.json")}
    assert json.loads((tmp_path / "dtm" / "dtm.json").read_text())["rows"] == report["rows"]
    subs = [CheckpointReader(tmp_path / "dtm" / "submodels" / f"part_{k}" / "merged") for k in range(2)]
    with CheckpointReader(tmp_path / "dtm" / "dtm_soup") as merged:
        name = next(n for n in merged.keys() if "q_proj.weight" in n and "visual" not in n)
        assert torch.allclose(merged.get(name), (subs[0].get(name) + subs[1].get(name)) / 2, atol=1e-6)
    # another merge of the same sub-models: a new row and folder, nothing retrained
    assert main([*arguments, "--merge", "task_arithmetic", "--merge-weight", "1"]) == 0
    rows = json.loads((tmp_path / "dtm" / "dtm.json").read_text())["rows"]
    assert [row["model"] for row in rows] == ["base", "part_0", "part_1", "dtm_task_arithmetic_w1", "single"]
    assert stamps == {path: path.stat().st_mtime_ns for path in (tmp_path / "dtm").rglob("train_result.json")}
    with CheckpointReader(tmp_path / "dtm" / "dtm_task_arithmetic_w1") as summed, \
            CheckpointReader(tiny_qwen2vl) as base:
        expected = subs[0].get(name) + subs[1].get(name) - base.get(name)  # base + the sum of the task vectors
        assert torch.allclose(summed.get(name), expected, atol=1e-6)


@pytest.mark.parametrize("inside", ["model", "data"])
def test_an_output_inside_an_input_is_refused_before_any_work(tiny_qwen2vl, synthetic_ko, tmp_path, capsys, inside):
    before = sorted(path.name for path in Path(synthetic_ko).iterdir())
    output = Path(tiny_qwen2vl if inside == "model" else synthetic_ko) / "dtm"
    with pytest.raises(SystemExit) as exit_code:
        run_cli(main, ["--model", str(tiny_qwen2vl), "--data", str(synthetic_ko), "--output", str(output)])
    stderr = capsys.readouterr().err.strip()
    assert exit_code.value.code == 2 and stderr.startswith("error: ") and "lies inside the input" in stderr
    assert "\n" not in stderr and not output.exists()
    assert sorted(path.name for path in Path(synthetic_ko).iterdir()) == before


def test_a_second_run_on_the_same_output_is_refused_while_the_first_holds_it(tiny_qwen2vl, synthetic_ko, tmp_path,
                                                                            capsys):
    import subprocess
    import sys

    from cmaam.io.atomic import lock_path

    output = tmp_path / "dtm"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from cmaam.io.atomic import output_lock\n"
                               "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
                               str(output)], stdout=subprocess.PIPE, text=True)  # the first run, still working
    try:
        assert holder.stdout.readline().strip() == "held" and lock_path(output).exists()
        with pytest.raises(SystemExit) as exit_code:
            run_cli(main, ["--model", str(tiny_qwen2vl), "--data", str(synthetic_ko), "--output", str(output)])
    finally:
        holder.kill()
        holder.wait()
    stderr = capsys.readouterr().err.strip()
    assert exit_code.value.code == 2 and "another run is writing this output" in stderr and "\n" not in stderr
    assert not (output / "parts").exists()
