"""Evaluation CLIs on broken inputs: one 'error:' line, exit code 2, no traceback, and nothing left behind.

Broken models come from the ``broken_models`` fixture (tests/eval/conftest.py); every case asserts that the
output folder was never created (or was removed), including the hidden folder a run is staged in.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cmaam.core.cli import run_cli
from cmaam.core.errors import CMAAMError
from eval.generation import HFGenerator
from eval.loading import loading_problems
from eval.mgsm.__main__ import main as mgsm_main
from eval.vqa.__main__ import main as vqa_main
from eval.vqa.evaluate import vqa_requests

ROOT = Path(__file__).resolve().parents[2]
LOAD_ERRORS = [
    ("corrupt", [], "corrupt/model.safetensors"),
    ("truncated_shard", [], "model-00003-of-00003.safetensors"),
    ("bad_pickle", [], "--allow-pickle"),
    ("bad_pickle", ["--allow-pickle"], "bad_pickle: cannot load the model (UnpicklingError: Weights only load failed"),
    ("missing", [], "the checkpoint does not match the model: 3 missing (would be random): "
                    "model.layers.1.mlp.down_proj.weight, model.layers.1.mlp.gate_proj.weight, "
                    "model.layers.1.mlp.up_proj.weight"),
    ("no_lm_head", [], "1 missing (would be random): lm_head.weight"),
    ("unexpected", [], "1 unexpected: model.extra.weight"),
    ("wrong_shape", [], "1 of the wrong shape: model.norm.weight (checkpoint [7], model [64])"),
]


@pytest.fixture
def text_questions(tmp_path):
    """A VQA JSONL with text-only questions (no images), which a text-only model may answer."""
    path = tmp_path / "text.jsonl"
    path.write_text('{"id": "a", "image": null, "question": "2 + 2?", "answer": "4"}\n', encoding="utf-8")
    return path


def leftovers(folder: Path) -> list[str]:
    """Everything under ``folder`` (hidden staging folders included); [] when it does not exist."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("name,options,message", LOAD_ERRORS, ids=[f"{c[0]}{''.join(c[1])}" for c in LOAD_ERRORS])
@pytest.mark.parametrize("task", ["mgsm", "vqa"])
def test_load_errors_are_one_line_and_leave_nothing(task, name, options, message, broken_models, text_questions,
                                                   tmp_path, cli_error):
    out = tmp_path / "results"
    common = ["--model", str(broken_models[name]), "--output-dir", str(out), "--wandb-mode", "offline",
              "--no-progress", "--max-new-tokens", "2", *options]
    if task == "mgsm":
        line = cli_error(mgsm_main, ["--lang", "en", "--limit", "1", *common])
    else:
        line = cli_error(vqa_main, ["--data", str(text_questions), *common])
    assert message in line
    assert not out.exists()


def test_tied_embeddings_are_not_missing(broken_models):
    """tie_word_embeddings without lm_head in the checkpoint loads strictly: lm_head is the embedding."""
    generator = HFGenerator(broken_models["tied"], max_new_tokens=2, progress=False)
    model = generator.model
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    from cmaam.io import CheckpointReader

    embedding = CheckpointReader(broken_models["tied"]).get("model.embed_tokens.weight")
    assert torch.equal(model.lm_head.weight, embedding)


def test_loading_problems_drop_ties_whose_partner_loaded():
    class Tied:
        all_tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    assert loading_problems(Tied(), {"missing_keys": ["lm_head.weight"]}) == []
    both = loading_problems(Tied(), {"missing_keys": ["lm_head.weight", "model.embed_tokens.weight"]})
    assert both == ["2 missing (would be random): lm_head.weight, model.embed_tokens.weight"]
    many = loading_problems(object(), {"missing_keys": [f"w{i}" for i in range(5)], "unexpected_keys": ["x"],
                                       "error_msgs": ["size mismatch\nmore detail"]})
    assert many == ["5 missing (would be random): w0, w1, w2, ... (5 in all)", "1 unexpected: x", "size mismatch"]


def test_command_line_without_transformers_quiet_settings(broken_models, tmp_path):
    """As a user runs it (transformers' default verbosity): the load report is not printed, only our line."""
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    env.update(PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    out = tmp_path / "results"
    command = [sys.executable, "-m", "eval.mgsm", "--model", str(broken_models["missing"]), "--lang", "en",
               "--limit", "1", "--output-dir", str(out), "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {broken_models['missing']}: the checkpoint does not match the model: 3 missing (would be random): "
        "model.layers.1.mlp.down_proj.weight, model.layers.1.mlp.gate_proj.weight, model.layers.1.mlp.up_proj.weight"]
    assert done.stdout == "" and not out.exists()


def never_load(*args, **kwargs):
    pytest.fail("the model was loaded although the inputs were invalid")


@pytest.mark.parametrize("content,problem", [
    (b"hello, this is a text file\n", "not a readable image (UnidentifiedImageError"),
    ("truncated", "not a readable image (OSError: image file is truncated"),
])
def test_unreadable_image_fails_before_the_model_loads(tiny_qwen2vl, vqa_folder, tmp_path, monkeypatch, cli_error,
                                                       content, problem):
    image = vqa_folder.parent / "images" / "blue.png"
    image.write_bytes(image.read_bytes()[:60] if content == "truncated" else content)
    monkeypatch.setattr("eval.vqa.run.load_generator", never_load)
    out = tmp_path / "results"
    line = cli_error(vqa_main, ["--model", str(tiny_qwen2vl), "--data", str(vqa_folder), "--output-dir", str(out)])
    assert line.startswith(f"error: {vqa_folder}:2: {image}: {problem}")
    assert not out.exists()


def test_text_only_model_with_image_questions(tiny_llama, vqa_folder, tmp_path, monkeypatch, cli_error):
    out = tmp_path / "results"
    argv = ["--model", str(tiny_llama), "--data", str(vqa_folder), "--output-dir", str(out), "--wandb-mode",
            "offline", "--max-new-tokens", "2", "--no-progress", "--run-name", "blind"]
    with monkeypatch.context() as patch:
        patch.setattr("eval.vqa.run.load_generator", never_load)
        line = cli_error(vqa_main, argv)
    assert line == (f"error: {tiny_llama}: text-only model (no vision_config), but questions with an image: 2 of 3 "
                    f"(first: {vqa_folder}:1); pass --text-only to evaluate the questions without their images")
    assert not out.exists()
    assert vqa_main(argv + ["--text-only"]) == 0
    folder = out / "blind"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["count"] == 3 and metrics["images_dropped"] == 2
    assert "text_only: true" in (folder / "config.yaml").read_text(encoding="utf-8")
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert samples[0]["image"].endswith("red.png") and "What color is the square?" in samples[0]["prompt"]
    assert [p.name for p in out.iterdir()] == ["blind"]  # no hidden staging folder left


def test_text_only_requests_and_generator_guard(tiny_llama, vqa_folder):
    from eval.vqa import load_vqa_jsonl

    items = load_vqa_jsonl(vqa_folder)
    assert [r.image is None for r in vqa_requests(items)] == [False, False, True]
    assert all(r.image is None for r in vqa_requests(items, text_only=True))
    generator = HFGenerator(tiny_llama, max_new_tokens=1, progress=False)
    with pytest.raises(CMAAMError, match="text-only model was given a request with an image"):
        generator.generate(vqa_requests(items))


class Failing:
    """A generator that fails mid-evaluation (after the run folder would have been created)."""

    def __init__(self, error):
        self.error = error

    def generate(self, requests):
        raise self.error


def test_failure_during_evaluation_leaves_nothing(tmp_path, monkeypatch, cli_error, tiny_llama):
    out = tmp_path / "deep" / "results"
    argv = ["--model", str(tiny_llama), "--lang", "en", "--limit", "2", "--output-dir", str(out), "--run-name", "r",
            "--wandb-mode", "offline", "--no-progress"]
    monkeypatch.setattr("eval.mgsm.run.load_generator", lambda *a, **k: Failing(CMAAMError("generation failed")))
    assert cli_error(mgsm_main, argv) == "error: generation failed"
    assert not (tmp_path / "deep").exists()
    monkeypatch.setattr("eval.mgsm.run.load_generator", lambda *a, **k: Failing(KeyboardInterrupt()))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(mgsm_main, argv)
    assert exit_info.value.code == 130 and not (tmp_path / "deep").exists()


def test_overwrite_replaces_a_run_only_when_the_new_one_succeeds(tmp_path, monkeypatch, cli_error, tiny_llama):
    out = tmp_path / "results"
    argv = ["--model", str(tiny_llama), "--lang", "en", "--limit", "2", "--max-new-tokens", "2", "--output-dir",
            str(out), "--run-name", "r", "--wandb-mode", "disabled", "--no-progress"]
    assert mgsm_main(argv) == 0
    before = {name: (out / "r" / name).read_bytes() for name in ("metrics.json", "samples.jsonl", "config.yaml")}
    monkeypatch.setattr("eval.mgsm.run.load_generator", lambda *a, **k: Failing(CMAAMError("generation failed")))
    cli_error(mgsm_main, argv + ["--overwrite"])
    assert {name: (out / "r" / name).read_bytes() for name in before} == before
    assert leftovers(out) == ["r"] + [f"r/{name}" for name in sorted(before)]
    monkeypatch.undo()
    assert mgsm_main(argv + ["--overwrite", "--limit", "1"]) == 0
    assert json.loads((out / "r" / "metrics.json").read_text())["count"] == 1


def test_unfinished_run_folder_is_not_replaced_without_overwrite(tmp_path, tiny_llama, cli_error):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    line = cli_error(mgsm_main, ["--model", str(tiny_llama), "--lang", "en", "--limit", "1", "--max-new-tokens", "2",
                                 "--output-dir", str(tmp_path), "--run-name", "r", "--wandb-mode", "disabled"])
    assert "already exists (not a finished run)" in line and "--overwrite" in line
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"
