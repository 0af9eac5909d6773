"""The experiment pipeline end to end, in process, on a reduced demo config (seconds, not minutes)."""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch
import yaml

from cmaam.core.errors import CMAAMError
from cmaam.core.presets import preset_path
from cmaam.pipeline.experiment import Pipeline, load_experiment_config
from eval.vqa.metrics import exact_match

MODELS = ["base", "finetuned", "cmaam_basic", "cmaam_layerwise", "cmaam_component", "cmaam_full",
          "cmaam_full_pm_0.5", "adamerging_full", "adamms_basic", "linear_0.3", "linear_0.5", "linear_0.7", "ties_1"]
# the reduced demo: every family once, tiny sizes
REDUCED_MERGE = {
    "baseline_alphas": [0.3, 0.5, 0.7], "preserve_mean_alphas": [0.5], "preserve_mean_strategies": ["full"],
    "task_vector_methods": [{"method": "ties", "density": 0.5, "weights": [1.0]}],
    "adapt": [{"method": "adamerging", "strategy": "full", "steps": 2, "batch_size": 2},
              {"method": "adamms", "strategy": "basic", "grid": [0.0, 0.5, 1.0], "max_new_tokens": 2}]}


def reduced_config(tmp_path: Path) -> Path:
    """The demo preset with tiny data and a few training steps."""
    values = yaml.safe_load(preset_path("experiments", "demo").read_text())
    values["name"] = "demo-test"
    values["output_dir"] = str(tmp_path / "experiment")
    values["wandb_mode"] = "disabled"
    values["data"] = {"synthetic_samples": 40, "image_size": 56, "english_korean_share": 0.2}
    values["base_model"]["training"] = {"max_steps": 2, "batch_size": 4, "lr": 1e-3}
    values["finetune"] = {"max_steps": 2, "batch_size": 4, "lora_rank": 4, "lora_alpha": 8}
    values["finetune_variants"] = {"vision": dict(values["finetune"], train_vision=True)}
    values["merge"].update(REDUCED_MERGE)
    values["evaluation"] = {"limit": 4, "batch_size": 4, "max_new_tokens": 4}
    path = tmp_path / "reduced.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def no_subprocess(*args, **kwargs):
    raise AssertionError(f"the pipeline started a subprocess: {args[:1]}")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pipeline")
    config = load_experiment_config(path=reduced_config(tmp_path))
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", no_subprocess)  # every step runs in this process
        first = Pipeline(config, echo=False)
        first.run(["prepare", "base"])  # an "interrupted" experiment: only the first steps finished
        second = Pipeline(config, echo=False)
        second.run()
    assert torch.get_num_threads() == threads  # the steps' settings do not outlive the run
    return config, first, second


def test_every_artefact_exists(finished):
    config, _, _ = finished
    root = Path(config.output_dir)
    for split in ("train", "val", "test"):
        assert (root / "data/synthetic_ko" / f"{split}.jsonl").stat().st_size > 0
        assert (root / "data/synthetic_en" / f"{split}.jsonl").stat().st_size > 0
    pipeline = Pipeline(config, echo=False)
    for spec in pipeline.models():
        name, path = spec.name, spec.path
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



def test_each_step_logs_its_records_and_output(finished):
    config, _, _ = finished
    logs = {step: (Path(config.output_dir) / "logs" / f"{step}.log").read_text()
            for step in ("prepare", "base", "finetune", "merge", "baselines", "evaluate", "compare")}
    for step, text in logs.items():
        assert f"INFO cmaam.pipeline.experiment: == {step}: " in text, step  # each item's header (logging)
    assert "(seed 0, threads 1, deterministic True)" in logs["merge"]
    assert "INFO finetune.lora_vqa: training" in logs["finetune"] and "LoRA on" in logs["finetune"]
    assert "strategy full:" in logs["merge"] and "mean alpha" in logs["merge"]  # merge_vlm's printed summary
    assert "| cmaam_full | cmaam |" in logs["compare"]  # the table, printed by the step


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
    assert [item.split(":")[0] for item in first.ran] == ["prepare", "prepare", "prepare", "base", "base"]
    assert set(second.skipped) == set(first.ran)  # the second run redid none of the first run's work
    assert not any(item.split(":")[0] in ("prepare", "base") for item in second.ran)
    third = Pipeline(config, echo=False)
    third.run()
    # everything else already complete
    assert third.ran == ["compare:comparison table and frontier", "compare:vision: comparison table and frontier"]


def test_the_variant_arm_and_the_families(finished):
    """The second fine-tune has its own models, results and comparison; every family reaches the frontier."""
    config, _, _ = finished
    root = Path(config.output_dir)
    variant = root / "variants" / "vision"
    first = json.loads((root / "models/finetuned/merged/config.json").read_text())
    assert (variant / "models/finetuned/merged/model.safetensors").read_bytes() != \
        (root / "models/finetuned/merged/model.safetensors").read_bytes() and first
    for arm in (root, variant):
        # two training steps leave the base at 0 English, so no retention and an empty frontier: its header only
        assert (arm / "comparison" / "frontier.csv").read_text().startswith("family,models,hypervolume,on_front,")
        assert (arm / "comparison" / "frontier.png").read_bytes()[:4] == b"\x89PNG"
        families = {yaml.safe_load((arm / "results" / name / "config.yaml").read_text())["family"] for name in MODELS}
        assert families == {"base", "finetuned", "cmaam", "cmaam_full_pm", "adamerging", "adamms", "linear", "ties"}
        run = yaml.safe_load((arm / "results" / "ties_1" / "config.yaml").read_text())
        assert run["family"] == "ties" and run["parameter"] == 1.0 and run["method"] == "ties"
        assert (arm / "models/ties/lambda_1/mergekit_config.yml").is_file()
        for name in ("adamerging_full", "adamms_basic"):
            report = json.loads((arm / "models" / name / "analysis" / "report.json").read_text())
            assert report["adaptation"]["method"] == name.split("_")[0]
        held_out = json.loads((arm / "models/adamerging_full/analysis/report.json").read_text())
        assert set(held_out["adaptation"]["entropy"]) == {"adapt", "held_out"}
    unlabeled = [json.loads(line) for line in (root / "data/unlabeled/val.jsonl").read_text().splitlines()]
    assert unlabeled and all("answer" not in row for row in unlabeled)
    assert {row["id"].split("/")[0] for row in unlabeled} == {"ko", "en"}
    assert all((root / "data/unlabeled" / row["image"]).is_file() for row in unlabeled)
    english = [json.loads(line) for line in (root / "data/synthetic_en/train.jsonl").read_text().splitlines()]
    assert {row["lang"] for row in english} == {"en", "ko"}  # the base learns some Korean


def test_bad_config_values_are_one_line_errors(tmp_path):
    path = reduced_config(tmp_path)
    cases = {
        "merge.strategies=[basic,magic]": "reduced.yaml: merge.strategies: unknown 'magic'",
        "merge.alpha=0.3": "reduced.yaml: merge.alpha: unknown key (known: strategies, base_alpha,",
        "merge.base_alpha=1.5": "reduced.yaml: merge.base_alpha: must be in [0, 1], got 1.5",
        "finetune.lora_rank=many": "reduced.yaml: finetune.lora_rank: expected a whole number, got 'many'",
        "base_model.training.lr=-1": "reduced.yaml: base_model.training: --lr must be positive, got -1.0",
    }
    for assignment, message in cases.items():
        with pytest.raises(CMAAMError) as error:
            load_experiment_config(path=path, overrides=[assignment])
        assert str(error.value).startswith(message), str(error.value)
    result = subprocess.run([sys.executable, "-m", "cmaam.experiment", "full"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert "korean_source" in result.stderr


def test_typed_fields_reach_the_library_calls(tmp_path):
    config = load_experiment_config(path=reduced_config(tmp_path), overrides=[
        "merge.preserve_mean=true", "merge.score_weights={pda: 1, gfs: 0, cmbc: 0}", "merge.base_alpha=0.7"])
    alphas = config.merge.alphas("full")
    assert alphas.strategy == "full" and alphas.base_alpha == 0.7 and alphas.preserve_mean is True
    assert alphas.score_weights == {"pda": 1.0, "gfs": 0.0, "cmbc": 0.0}
    assert config.finetune.max_steps == 2 and config.finetune.lora_rank == 4 and config.finetune.epochs == 3.0
    saved = yaml.safe_load(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(config)))))
    assert saved["merge"]["base_alpha"] == 0.7  # a float end to end


def test_a_failing_step_stops_the_pipeline_with_its_log(tmp_path):
    # the base is always trained fully, and full fine-tuning has no embeddings-only switch: train() refuses
    config = load_experiment_config(path=reduced_config(tmp_path),
                                    overrides=["base_model.training.train_embeddings=true"])
    with pytest.raises(CMAAMError, match=r"step base \(train base on English\) failed: --target-modules and "
                                         r"--train-embeddings apply to LoRA.*full log: .*base\.log"):
        Pipeline(config, echo=False).run(["prepare", "base"])
    log = (Path(config.output_dir) / "logs" / "base.log").read_text()
    assert "error: --target-modules and --train-embeddings apply to LoRA" in log
    assert (Path(config.output_dir) / "models" / "initial" / "config.json").is_file()  # the item before it ran


class ProbePipeline(Pipeline):
    """A pipeline with one step that records the process settings its work sees."""

    STEPS = ("probe",)

    def probe(self) -> None:
        self.seen = []
        for _ in range(2):
            self._run("probe", "settings", lambda: self.seen.append({
                "threads": torch.get_num_threads(), "deterministic": torch.are_deterministic_algorithms_enabled(),
                "random": random.random(), "numpy": float(numpy.random.rand()), "torch": torch.rand(1).item()}))


def test_every_item_starts_with_the_configured_seed_threads_and_kernels(tmp_path):
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    config = load_experiment_config(path=reduced_config(tmp_path), overrides=["seed=7", "threads=3"])
    pipeline = ProbePipeline(config, echo=False)
    pipeline.run()
    expected = {"threads": 3, "deterministic": True, "random": random.Random(7).random(),
                "numpy": numpy.random.RandomState(7).rand(),
                "torch": torch.rand(1, generator=torch.Generator().manual_seed(7)).item()}
    assert pipeline.seen == [expected, expected]  # each item reseeded, not continuing the previous stream
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == deterministic


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


def test_command_flags_override_the_config(tmp_path):
    from cmaam.experiment import main

    output = tmp_path / "exp"
    assert main(["demo", "--steps", "prepare", "--set", f"output_dir={output}", "--set", "data.synthetic_samples=10",
                 "--set", "data.image_size=28", "--seed", "5", "--device", "cpu"]) == 0
    saved = yaml.safe_load((output / "experiment.yaml").read_text())
    assert saved["seed"] == 5 and saved["device"] == "cpu" and saved["data"]["synthetic_samples"] == 10
    info = json.loads((output / "data" / "synthetic_ko" / "dataset_info.json").read_text())
    assert info["config"]["seed"] == 5  # the step received the overridden seed
    assert json.loads((output / "data" / "synthetic_en" / "dataset_info.json").read_text())["config"]["seed"] == 6
