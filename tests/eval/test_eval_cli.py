"""The MGSM and VQA command lines end to end on tiny random models, and their one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

from eval.mgsm.__main__ import main as mgsm_main
from eval.vqa.__main__ import main as vqa_main

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_FIELDS = {"prompt", "completion", "extracted", "gold", "correct"}


def test_mgsm_cli_in_process_with_wandb_offline(tiny_llama, tmp_path, capfd, cli_error):
    code = mgsm_main(["--model", str(tiny_llama), "--lang", "ja", "--limit", "3", "--max-new-tokens", "4",
                      "--batch-size", "2", "--output-dir", str(tmp_path), "--run-name", "ja", "--wandb-mode",
                      "offline", "--no-progress"])
    assert code == 0 and "MGSM ja: accuracy" in capfd.readouterr().out
    folder = tmp_path / "ja"
    metrics = json.loads((folder / "metrics.json").read_text())
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert metrics["count"] == 3 and len(samples) == 3 and SAMPLE_FIELDS <= set(samples[0])
    assert metrics["accuracy"] == sum(s["correct"] for s in samples) / 3
    assert samples[0]["gold"] == 18.0 and "問題：" in samples[0]["prompt"]
    assert list((folder / "wandb").glob("offline-run-*/run-*.wandb"))
    config = (folder / "config.yaml").read_text(encoding="utf-8")
    assert "lang: ja" in config and "count: 3" in config
    line = cli_error(mgsm_main, ["--model", str(tiny_llama), "--lang", "ja", "--output-dir", str(tmp_path),
                                 "--run-name", "ja", "--wandb-mode", "disabled"])
    assert "results already exist" in line


def test_mgsm_cli_korean_tsv_few_shot_direct(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    data = tmp_path / "ko.tsv"
    data.write_text("사과 2개와 3개를 더하면?\t5\n연필 10자루에서 4자루를 빼면?\t6\n", encoding="utf-8")
    argv = ["--model", str(tiny_llama), "--lang", "ko", "--data", str(data), "--shots", "1", "--no-cot",
            "--max-new-tokens", "3", "--output-dir", str(tmp_path / "results"), "--wandb-mode", "disabled"]
    assert mgsm_main(argv) == 0
    folder = tmp_path / "results" / f"mgsm-ko-1shot-{tiny_llama.name}"
    assert json.loads((folder / "metrics.json").read_text())["count"] == 2
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [s["gold"] for s in samples] == [5.0, 6.0] and "정답은 27입니다." in samples[0]["prompt"]
    assert not (folder / "wandb").exists()


def test_vqa_cli_in_process_with_wandb_offline(tiny_qwen2vl, vqa_folder, tmp_path):
    argv = ["--model", str(tiny_qwen2vl), "--data", str(vqa_folder), "--max-new-tokens", "3", "--output-dir",
            str(tmp_path / "results"), "--run-name", "vqa", "--wandb-mode", "offline", "--no-progress"]
    assert vqa_main(argv) == 0
    folder = tmp_path / "results" / "vqa"
    metrics = json.loads((folder / "metrics.json").read_text())
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert metrics["count"] == 3 and {"category/color/count", "category/색상/exact_match"} <= set(metrics)
    assert [s["id"] for s in samples] == ["q1", "q2", "q3"] and SAMPLE_FIELDS <= set(samples[0])
    assert metrics["exact_match"] == sum(s["exact_match"] for s in samples) / 3
    assert "<|image_pad|>" in samples[0]["prompt"] and "<|image_pad|>" not in samples[2]["prompt"]
    assert (folder / "per_category.png").read_bytes()[:4] == b"\x89PNG"
    assert list((folder / "wandb").glob("offline-run-*/run-*.wandb"))


def test_entry_points_as_modules(tiny_llama, tmp_path):
    """`python -m eval.mgsm` runs; `python -m eval.vqa` reports a bad line as one line with exit code 2."""
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "eval.mgsm", "--model", str(tiny_llama), "--lang", "en", "--limit", "1",
               "--max-new-tokens", "2", "--output-dir", str(tmp_path / "results"), "--run-name", "en"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "results" / "en" / "metrics.json").read_text())["count"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "image": null, "question": "q"}\n', encoding="utf-8")
    command = [sys.executable, "-m", "eval.vqa", "--model", str(tiny_llama), "--data", str(bad)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == \
        [f"error: {bad}:1: field 'answer' must be a non-empty string"]


def test_bad_inputs_are_one_line_errors(tiny_llama, tmp_path, cli_error):
    out = tmp_path / "results"
    common = ["--output-dir", str(out), "--wandb-mode", "disabled"]
    bad_tsv = tmp_path / "bad.tsv"
    bad_tsv.write_text("q1\t1\nq2\t2\nq3 no tab\n", encoding="utf-8")
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"id": "a", "question": "q", "answer": "x", "image": null}\n{"id": \n', encoding="utf-8")
    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    (not_a_model / "notes.txt").write_text("hello")
    cases = [
        (mgsm_main, ["--model", str(tiny_llama), "--lang", "ja", "--data", str(tmp_path / "none.tsv")],
         "none.tsv: data file not found"),
        (mgsm_main, ["--model", str(tiny_llama), "--lang", "ja", "--data", str(bad_tsv)],
         "bad.tsv:3: expected 2 tab-separated columns"),
        (mgsm_main, ["--model", str(not_a_model), "--lang", "en", "--limit", "1"], "no config.json"),
        (mgsm_main, ["--model", str(tmp_path / "bad.tsv"), "--lang", "en", "--limit", "1"], "model folder not found"),
        (mgsm_main, ["--model", str(tiny_llama), "--lang", "xx"], "unknown language 'xx' (choose ko, ja, zh, en)"),
        (mgsm_main, ["--model", str(tiny_llama), "--lang", "ko"], "no bundled 'ko' split"),
        (mgsm_main, ["--model", str(tiny_llama), "--lang", "en", "--shots", "9"], "shots must be between 0 and 8"),
        (mgsm_main, ["--model", str(tiny_llama), "--lang", "en", "--language-threshold", "2"], "must be in [0, 1]"),
        (vqa_main, ["--model", str(tiny_llama), "--data", str(bad_jsonl)], "bad.jsonl:2: invalid JSON"),
        (vqa_main, ["--model", str(tiny_llama), "--data", str(tmp_path / "none.jsonl")], "data file not found"),
        (mgsm_main, ["--model", str(tiny_llama), "--lang", "en", "--backend", "tgi", "--limit", "1"],
         "unknown generation backend"),
    ]
    for main, argv, message in cases:
        assert message in cli_error(main, argv + common)
    assert not out.exists() or not any(out.iterdir())
