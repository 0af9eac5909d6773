"""The experiment pipeline end to end on a reduced demo config (seconds, not minutes)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cmaam.core.errors import CMAAMError
from cmaam.core.presets import preset_path
from cmaam.pipeline.experiment import Pipeline, load_experiment_config
from eval.vqa.metrics import exact_match

MODELS = ["base", "finetuned", "cmaam_basic", "cmaam_layerwise", "cmaam_component", "cmaam_full",
          "linear_0.3", "linear_0.5", "linear_0.7"]


def reduced_config(tmp_path: Path) -> Path:
    """The demo preset with tiny data and a few training steps."""
    values = yaml.safe_load(preset_path("experiments", "demo").read_text())
    values["name"] = "demo-test"
    values["output_dir"] = str(tmp_path / "experiment")
    values["wandb_mode"] = "disabled"
    values["data"] = {"synthetic_samples": 40, "image_size": 56}
    values["base_model"]["train_args"] = ["--max-steps", "2", "--batch-size", "4", "--lr", "1e-3"]
    values["finetune"]["args"] = ["--max-steps", "2", "--batch-size", "4", "--lora-rank", "4", "--lora-alpha", "8"]
    values["evaluation"] = {"limit": 4, "batch_size": 4, "max_new_tokens": 4}
    path = tmp_path / "reduced.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pipeline")
    config = load_experiment_config(path=reduced_config(tmp_path))
    first = Pipeline(config, echo=False)
    first.run(["prepare", "base"])  # an "interrupted" experiment: only the first steps finished
    second = Pipeline(config, echo=False)
    second.run()
    return config, first, second


def test_every_artefact_exists(finished):
    config, _, _ = finished
    root = Path(config.output_dir)
    for split in ("train", "val", "test"):
        assert (root / "data/synthetic_ko" / f"{split}.jsonl").stat().st_size > 0
        assert (root / "data/synthetic_en" / f"{split}.jsonl").stat().st_size > 0
    pipeline = Pipeline(config, echo=False)
    for name, _, path in pipeline.models():
        assert (Path(path) / "config.json").exists(), name
        metrics = json.loads((root / "results" / name / "metrics.json").read_text())
        assert metrics["ko/count"] == 4 and metrics["en/count"] == 4
        for lang in ("ko", "en"):  # each accuracy is its samples re-scored against their gold answers
            lines = (root / "results" / name / f"samples_{lang}.jsonl").read_text(encoding="utf-8").splitlines()
            samples = [json.loads(line) for line in lines]
            assert len(samples) == 4 and all(sample["lang"] == lang for sample in samples)
            rescored = sum(exact_match(s["completion"], s["gold"], s["lang"]) for s in samples) / 4
            assert metrics[f"{lang}/exact_match"] == pytest.approx(rescored), (name, lang)
    for strategy in ("basic", "layerwise", "component", "full"):
        assert (root / "models" / f"cmaam_{strategy}" / "analysis" / "report.json").exists()
    for step in ("prepare", "base", "finetune", "merge", "baselines", "evaluate", "compare"):
        assert (root / "logs" / f"{step}.log").exists(), step


def test_compare_table_lists_every_model(finished):
    config, _, _ = finished
    comparison = Path(config.output_dir) / "comparison"
    with open(comparison / "comparison.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["model"] for row in rows) == sorted(MODELS)
    roles = {row["model"]: row["role"] for row in rows}
    assert roles["base"] == "base" and roles["finetuned"] == "finetuned" and roles["cmaam_full"] == "cmaam"
    base_row = next(row for row in rows if row["model"] == "base")
    assert float(base_row["ko_gain_vs_base"]) == 0.0
    markdown = (comparison / "comparison.md").read_text()
    assert all(f"| {name} |" in markdown for name in MODELS)
    assert (comparison / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_resumes_without_redoing_finished_steps(finished):
    config, first, second = finished
    assert [item.split(":")[0] for item in first.ran] == ["prepare", "prepare", "base", "base"]
    assert set(second.skipped) == set(first.ran)  # the second run redid none of the first run's work
    assert not any(item.split(":")[0] in ("prepare", "base") for item in second.ran)
    third = Pipeline(config, echo=False)
    third.run()
    assert third.ran == ["compare:comparison table"]  # everything else already complete


def test_bad_config_values_are_one_line_errors(tmp_path):
    path = reduced_config(tmp_path)
    with pytest.raises(CMAAMError, match="unknown strategies"):
        load_experiment_config(path=path, overrides=["merge.strategies=[basic,magic]"])
    with pytest.raises(CMAAMError, match="unknown key"):
        load_experiment_config(path=path, overrides=["merge.alpha=0.3"])
    with pytest.raises(CMAAMError, match=r"\[0, 1\]"):
        load_experiment_config(path=path, overrides=["merge.base_alpha=1.5"])
    result = subprocess.run([sys.executable, "-m", "cmaam.experiment", "full"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert "korean_source" in result.stderr


def test_a_failing_step_stops_the_pipeline_with_its_log(tmp_path):
    config = load_experiment_config(path=reduced_config(tmp_path), overrides=["base_model.train_args=[--no-such-flag]"])
    with pytest.raises(CMAAMError, match=r"step base .* failed .*no-such-flag.*full log: .*base\.log"):
        Pipeline(config, echo=False).run(["prepare", "base"])


def test_every_step_runs_under_the_reproducible_launcher(finished):
    config, _, _ = finished
    logs = Path(config.output_dir) / "logs"
    commands = [line for log in sorted(logs.glob("*.log")) for line in log.read_text().splitlines()
                if line.startswith("$ ")]
    modules = {command.split(" -m ")[-1].split()[0] for command in commands}
    assert modules == {"finetune.synthetic_vqa", "cmaam.tiny", "finetune.lora_vqa", "cmaam.merge", "cmaam.sweep",
                       "cmaam.experiment", "cmaam.compare"}
    assert all(" -m cmaam.reproducible --seed 0 --threads 1 -m " in command for command in commands)


def test_a_second_run_gives_the_same_bytes(finished, tmp_path):
    """Data, trained models and merges of a fresh run in another folder equal the first run's, byte for byte."""
    config, _, _ = finished
    again = load_experiment_config(path=reduced_config(tmp_path), overrides=["merge.strategies=[full]"])
    Pipeline(again, echo=False).run(["prepare", "base", "finetune", "merge"])
    first, second = Path(config.output_dir), Path(again.output_dir)
    compared = ["data/synthetic_ko/test.jsonl", "models/base/merged/model.safetensors",
                "models/finetuned/merged/model.safetensors", "models/cmaam_full/model.safetensors"]
    for name in compared:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
