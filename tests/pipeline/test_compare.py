"""cmaam.compare on hand-made result folders: the table's numbers, the CSV, the plot, W&B offline runs, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cmaam.compare import main
from cmaam.core.cli import run_cli
from cmaam.core.errors import CMAAMError
from cmaam.pipeline.compare import compare, load_records, read_wandb_offline, to_markdown

# name -> (role, ko exact match, en exact match, ko per-category exact match)
RUNS = {
    "base": ("base", 0.1, 0.8, {"general": 0.2, "math_problem": 0.0}),
    "finetuned": ("finetuned", 0.6, 0.4, {"general": 0.7, "math_problem": 0.5}),
    "cmaam_full": ("cmaam", 0.5, 0.6, {"general": 0.5}),
    "linear_0.5": ("baseline", 0.3, 0.7, {"general": 0.4, "math_problem": 0.25}),
}


def write_runs(root: Path) -> Path:
    """One result folder per run (metrics.json + config.yaml) and a folder without metrics (not a run)."""
    for name, (role, ko, en, categories) in RUNS.items():
        folder = root / name
        folder.mkdir(parents=True)
        metrics = {"ko/exact_match": ko, "en/exact_match": en, "ko/count": 10, "flag": True}
        metrics |= {f"ko/category/{c}/exact_match": v for c, v in categories.items()}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (folder / "config.yaml").write_text(yaml.safe_dump({"model_name": name, "role": role}))
    (root / "unfinished").mkdir()
    return root


def test_table_numbers_csv_and_plot(tmp_path, capsys):
    results = write_runs(tmp_path / "results")
    with pytest.raises(SystemExit) as exited:
        run_cli(main, [str(results), "--output", str(tmp_path / "comparison")])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    with open(tmp_path / "comparison" / "comparison.csv", newline="") as handle:
        rows = {row["model"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["base", "finetuned", "cmaam_full", "linear_0.5"]  # ordered by role
    full = rows["cmaam_full"]
    assert full["role"] == "cmaam"
    assert float(full["ko_gain_vs_base"]) == pytest.approx(0.5 - 0.1)
    assert float(full["ko_vs_finetuned"]) == pytest.approx(0.5 - 0.6)
    assert float(full["en_retention_vs_base"]) == pytest.approx(0.6 / 0.8)
    assert float(full["en_retention_vs_finetuned"]) == pytest.approx(0.6 / 0.4)
    assert full["ko/general"] == "0.500000" and full["ko/math_problem"] == ""  # missing category: empty cell
    assert float(rows["linear_0.5"]["en_retention_vs_base"]) == pytest.approx(0.875)
    assert float(rows["base"]["ko_gain_vs_base"]) == 0.0 and float(rows["base"]["en_retention_vs_base"]) == 1.0
    markdown = (tmp_path / "comparison" / "comparison.md").read_text()
    assert markdown in printed
    assert "| cmaam_full | cmaam | cmaam_full | 0.500 | 0.600 | 0.500 | - | 0.400 | -0.100 | 0.750 | 1.500 |" \
        in markdown
    assert markdown.splitlines()[0] == ("| model | role | family | ko/exact_match | en/exact_match | ko/general | "
                                        "ko/math_problem | ko_gain_vs_base | ko_vs_finetuned | "
                                        "en_retention_vs_base | en_retention_vs_finetuned |")
    assert rows["linear_0.5"]["family"] == "linear" and full["family"] == "cmaam_full"
    with Image.open(tmp_path / "comparison" / "comparison.png") as image:
        assert image.format == "PNG" and image.size == (1128, 540)  # (1.1 x 4 models + 5) x 4.5 inches at 120 dpi


def test_default_output_is_beside_a_single_run(tmp_path, capsys):
    results = write_runs(tmp_path / "results")
    with pytest.raises(SystemExit) as exited:
        run_cli(main, [str(results / "base"), str(results / "finetuned")])
    assert exited.value.code == 0
    assert (results / "comparison" / "comparison.csv").is_file()
    assert not (results / "base" / "comparison.md").exists()  # a run folder is never written into


def test_base_and_finetuned_can_be_named(tmp_path):
    records = load_records([write_runs(tmp_path / "results")])
    comparison = compare(records, base="linear_0.5", finetuned="cmaam_full")
    rows = {row["model"]: row for row in comparison.rows}
    assert rows["linear_0.5"]["role"] == "base" and rows["base"]["role"] == "other"  # the named run wins
    assert rows["finetuned"]["ko_gain_vs_base"] == pytest.approx(0.6 - 0.3)
    assert rows["finetuned"]["en_retention_vs_finetuned"] == pytest.approx(0.4 / 0.6)


def test_wandb_offline_runs_of_the_project_only(tmp_path):
    for run, project, model, ko in (("offline-run-1", "mine", "soup", 0.25), ("offline-run-2", "other", "x", 0.9)):
        files = tmp_path / "exp" / "wandb" / run / "files"
        files.mkdir(parents=True)
        (files / "wandb-summary.json").write_text(json.dumps({"ko/exact_match": ko, "_runtime": 3}))
        (files / "config.yaml").write_text(yaml.safe_dump({"model_name": {"value": model},
                                                           "project": {"value": project},
                                                           "_wandb": {"value": {}}}))
    records = read_wandb_offline([tmp_path], "mine")
    assert [(r.name, r.metrics) for r in records] == [("soup", {"ko/exact_match": 0.25})]
    assert "| soup | other | soup | 0.250 | - |" in to_markdown(compare(records))


@pytest.mark.parametrize("call, message", [
    (lambda root: compare([]), "no runs to compare"),
    (lambda root: compare(load_records([root]), base="nobody"), "--base 'nobody' is not among the runs"),
    (lambda root: compare(load_records([root]), metric="anls"), "no run has 'ko/anls' or 'en/anls'"),
    (lambda root: load_records([root / "missing"]), "no such result folder"),
])
def test_errors(tmp_path, call, message):
    root = write_runs(tmp_path / "results")
    with pytest.raises(CMAAMError, match=message.replace("(", r"\(")):
        call(root)


def test_a_run_without_metrics_is_refused_when_named(tmp_path):
    from cmaam.pipeline.compare import read_local_run

    with pytest.raises(CMAAMError, match="no metrics.json"):
        read_local_run(write_runs(tmp_path / "results") / "unfinished")
