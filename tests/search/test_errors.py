"""Bad input -> one line `error: ...`, exit 2, before any candidate is evaluated (no evaluations.jsonl)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from cmaam.core.cli import run_cli
from cmaam.evolve import main
from cmaam.testing.tiny import TinySize, build_tiny_causal_lm


def run_evolve(config: dict, tmp_path: Path, capsys, *extra: str) -> str:
    """Run the CLI in process; return its stderr after asserting exit code 2 and a single error line."""
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_code:
        run_cli(main, ["--config", str(config_path), "--output-dir", str(tmp_path / "run"), *extra])
    stderr = capsys.readouterr().err.strip()
    assert exit_code.value.code == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.endswith(errors[0]) and "Traceback" not in stderr, stderr
    assert not (tmp_path / "run" / "evaluations.jsonl").exists()
    return stderr


@pytest.fixture
def config(tiny_search, tmp_path) -> dict:
    return copy.deepcopy(tiny_search)


def test_models_with_different_shapes(config, tmp_path, capsys):
    narrow = build_tiny_causal_lm(tmp_path / "narrow", "llama", seed=2,
                                  size=TinySize(hidden_size=32, intermediate_size=64))
    config["models"][1] = {"name": "math", "path": str(narrow)}
    capsys.readouterr()
    stderr = run_evolve(config, tmp_path, capsys)
    assert "shape mismatch" in stderr and "narrow" in stderr


def test_genome_length_that_does_not_match_the_model(config, tmp_path, capsys):
    config["genome"]["init"] = [0.5] * 20
    stderr = run_evolve(config, tmp_path, capsys)
    assert "genome.init has 20 values but this model needs 21 (21 tensor units x 1 slerp coefficients)" in stderr


def test_missing_mgsm_file(config, tmp_path, capsys):
    config["fitness"]["source"] = str(tmp_path / "mgsm_ko.tsv")
    stderr = run_evolve(config, tmp_path, capsys)
    assert "mgsm_ko.tsv: data file not found" in stderr


def test_resume_without_a_run_and_unknown_keys(config, tmp_path, capsys):
    assert "nothing to resume" in run_evolve(config, tmp_path, capsys, "--resume")
    config["fitness"]["limt"] = 3
    assert "config.yaml: fitness.limt: unknown key (known: type, source," in run_evolve(config, tmp_path, capsys)


def test_resume_with_a_changed_genome_is_refused(config, tmp_path, capsys):
    from cmaam.search.evolution import parse_config, run_search

    synthetic = copy.deepcopy(config)
    synthetic["fitness"] = {"type": "synthetic", "target": 0.4}
    synthetic.update(generations=1, population=2, output_dir=str(tmp_path / "run"), save_model=False)
    run_search(parse_config(synthetic))
    lines = (tmp_path / "run" / "evaluations.jsonl").read_text()
    synthetic["genome"]["sigma"] = 0.2
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(synthetic))
    with pytest.raises(SystemExit):
        run_cli(main, ["--config", str(path), "--resume"])
    assert "written for a different config" in capsys.readouterr().err
    assert (tmp_path / "run" / "evaluations.jsonl").read_text() == lines  # nothing evaluated
    with pytest.raises(SystemExit):
        run_cli(main, ["--config", str(path)])
    assert "already holds a search; pass --resume" in capsys.readouterr().err


def test_preset_names_resolve_and_unknown_presets_list_them(capsys, tmp_path):
    from cmaam.search.evolution import load_config

    assert load_config("tiny").genome.method == "slerp"
    with pytest.raises(SystemExit):
        run_cli(main, ["--config", "nope"])
    stderr = capsys.readouterr().err
    assert "config not found" in stderr and "tiny" in stderr


def test_set_and_flags_are_validated_with_the_config(config, tmp_path, capsys):
    stderr = run_evolve(config, tmp_path, capsys, "--set", "generations=0")
    assert "config.yaml: generations: must be at least 1, got 0" in stderr
    stderr = run_evolve(config, tmp_path, capsys, "--population", "1")
    assert "config.yaml: population: must be at least 2, got 1" in stderr
    stderr = run_evolve(config, tmp_path, capsys, "--set", "models.1.name=language")
    assert "config.yaml: models: model names must be unique, got ['language', 'language']" in stderr
    stderr = run_evolve(config, tmp_path, capsys, "--set", "fitness.type=magic")
    assert "config.yaml: fitness.type: unknown 'magic' (choose mgsm, vqa, synthetic)" in stderr


def test_flags_and_set_override_the_config_values():
    from cmaam.search.evolution import load_config

    config = load_config("tiny", ["fitness.limit=2", "genome.lambda=0.5"], {"seed": 4, "device": "cpu"})
    assert (config.fitness.limit, config.genome.lambda_, config.seed, config.device) == (2, 0.5, 4, "cpu")
    assert config.options.seed == 4 and config.options.device == "cpu"
