"""The Korean-vs-retention frontier: Pareto front, hypervolume and best-at-retention on hand-computed points,
and the files cmaam.compare writes."""

from __future__ import annotations

import csv
import json

import pytest

from cmaam.pipeline.frontier import (
    Point,
    best_at_retention,
    family_of,
    frontier,
    hypervolume,
    pareto_front,
)


def P(x, y, model="m", family="f"):
    return Point(model, family, x, y)


def test_hypervolume_of_hand_computed_points():
    # a staircase: (0.2, 1.0), (0.5, 0.6), (0.8, 0.1) -> 0.2*1.0 + 0.3*0.6 + 0.3*0.1 = 0.41
    assert hypervolume([P(0.2, 1.0), P(0.5, 0.6), P(0.8, 0.1)]) == pytest.approx(0.41, abs=1e-12)
    # a dominated point and a duplicate add nothing
    assert hypervolume([P(0.2, 1.0), P(0.5, 0.6), P(0.8, 0.1), P(0.4, 0.5), P(0.5, 0.6)]) == pytest.approx(0.41)
    assert hypervolume([P(0.5, 0.5)]) == pytest.approx(0.25)
    assert hypervolume([P(0.0, 1.0), P(0.7, 0.0)]) == 0.0  # on an axis: no area
    assert hypervolume([]) == 0.0
    # retention above 1 (a merge better than the base on English) counts as measured
    assert hypervolume([P(0.1, 1.2), P(0.3, 0.5)]) == pytest.approx(0.1 * 1.2 + 0.2 * 0.5)


def test_pareto_front_and_best_at_retention():
    points = [P(0.2, 1.0, "a"), P(0.5, 0.6, "b"), P(0.4, 0.5, "c"), P(0.8, 0.1, "d"), P(0.5, 0.95, "e")]
    assert [p.model for p in pareto_front(points)] == ["a", "e", "d"]
    assert best_at_retention(points, 0.9).model == "e"
    assert best_at_retention(points, 0.7).model == "e"
    assert best_at_retention(points, 0.05).model == "d"
    assert best_at_retention(points, 1.1) is None


def test_families_from_config_role_or_name():
    assert family_of("linear_0.3", "baseline") == "linear"
    assert family_of("cmaam_full_0.45", "cmaam") == "cmaam_full"
    assert family_of("cmaam_full", "cmaam") == "cmaam_full"
    assert family_of("anything", "cmaam", {"family": "adamerging_full"}) == "adamerging_full"
    assert family_of("base", "base") == "base" and family_of("ft", "finetuned") == "finetuned"


def test_each_family_counts_the_base_and_the_finetuned_model():
    rows = [{"model": "base", "ko": 0.2, "en_retention_vs_base": 1.0},
            {"model": "ft", "ko": 0.5, "en_retention_vs_base": 0.1},
            {"model": "linear_0.5", "ko": 0.4, "en_retention_vs_base": 0.8},
            {"model": "ties_0.5", "ko": 0.3, "en_retention_vs_base": 0.5},
            {"model": "broken", "ko": None, "en_retention_vs_base": 0.5}]
    families = {"base": "base", "ft": "finetuned", "linear_0.5": "linear", "ties_0.5": "ties"}
    result = frontier(rows, "ko", families)
    summaries = {s.family: s for s in result.families}
    assert set(summaries) == {"linear", "ties"}
    # linear: base (0.2, 1.0), linear (0.4, 0.8), ft (0.5, 0.1): 0.2 + 0.2*0.8 + 0.1*0.1 = 0.37
    assert summaries["linear"].hypervolume == pytest.approx(0.37)
    # ties: base, (0.3, 0.5), ft: 0.2*1.0 + 0.1*0.5 + 0.2*0.1 = 0.27 (the two ends alone: 0.2 + 0.3*0.1 = 0.23)
    assert summaries["ties"].hypervolume == pytest.approx(0.27)
    assert summaries["linear"].best[0.7].model == "linear_0.5" and summaries["ties"].best[0.7].model == "base"
    assert [p.model for p in result.front] == ["base", "linear_0.5", "ft"]


def run_folder(root, name, role, ko, en, family=None):
    folder = root / name
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"ko/exact_match": ko, "en/exact_match": en}))
    config = f"model_name: {name}\nrole: {role}\n" + (f"family: {family}\n" if family else "")
    (folder / "config.yaml").write_text(config)


def test_compare_writes_the_frontier_beside_the_comparison(tmp_path, capsys):
    from cmaam.compare import main

    runs = tmp_path / "results"
    runs.mkdir()
    run_folder(runs, "base", "base", 0.2, 0.5)
    run_folder(runs, "finetuned", "finetuned", 0.5, 0.05)
    for alpha, ko, en in ((0.3, 0.3, 0.45), (0.5, 0.4, 0.4), (0.7, 0.45, 0.2)):
        run_folder(runs, f"linear_{alpha}", "baseline", ko, en)
    run_folder(runs, "adamerging_full", "cmaam", 0.42, 0.46, family="adamerging")
    assert main([str(runs), "--output", str(tmp_path / "comparison")]) == 0
    out = tmp_path / "comparison"
    with open(out / "frontier.csv") as handle:
        rows = {row["family"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"linear", "adamerging"}
    # adamerging: base (0.2, 1.0), (0.42, 0.92), ft (0.5, 0.1) -> 0.2 + 0.22*0.92 + 0.08*0.1
    assert float(rows["adamerging"]["hypervolume"]) == pytest.approx(0.2 + 0.22 * 0.92 + 0.08 * 0.1, abs=1e-6)
    assert rows["adamerging"]["model_at_retention_0.9"] == "adamerging_full"
    assert rows["linear"]["model_at_retention_0.9"] == "linear_0.3"  # retention 0.9 exactly
    assert rows["linear"]["model_at_retention_0.7"] == "linear_0.5"
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    text = (out / "comparison.md").read_text()
    assert "## Frontier" in text and "adamerging_full" in text
    assert "hypervolume" in capsys.readouterr().out


def test_compare_lists_the_adaptive_merges_with_held_out_entropy(tmp_path, capsys):
    """An adaptive merge's run names its model folder; the comparison reads the model's report.json and shows
    AdaMerging's entropy on the inputs it adapted on beside the held-out inputs, and AdaMMS's chosen alpha."""
    from cmaam.compare import main

    runs = tmp_path / "results"
    runs.mkdir()
    run_folder(runs, "base", "base", 0.2, 0.5)
    run_folder(runs, "finetuned", "finetuned", 0.5, 0.05)
    sections = {"adamerging_full": {"method": "adamerging", "entropy": {
                    "adapt": {"before": 0.91234567, "after": 0.41, "inputs": 396},
                    "held_out": {"before": 0.88, "after": 0.52345678, "inputs": 396}}},
                "adamms_basic": {"method": "adamms", "chosen_mean_alpha": 0.6},
                "ties_0.5": None}  # a task-vector baseline: its config names a method too, but no adaptation
    for name, section in sections.items():
        model = tmp_path / "models" / name
        (model / "analysis").mkdir(parents=True)
        (model / "analysis" / "report.json").write_text(json.dumps({"adaptation": section} if section else {}))
        run_folder(runs, name, "cmaam", 0.4, 0.4)
        config = runs / name / "config.yaml"
        method = section["method"] if section else "ties"
        config.write_text(config.read_text() + f"model: {model}\nmethod: {method}\n")
    assert main([str(runs), "--output", str(tmp_path / "comparison")]) == 0
    text = (tmp_path / "comparison" / "comparison.md").read_text()
    assert text in capsys.readouterr().out
    section = text.split("## Adaptive merges (label-free)")[1]
    assert ("| adamerging_full | adamerging | 0.9123 -> 0.4100 (396 inputs) | 0.8800 -> 0.5235 (396 inputs) | - |"
            in section)
    assert "| adamms_basic | adamms | - | - | 0.6 |" in section
    assert "ties_0.5" not in section


def test_compare_without_adaptive_merges_has_no_adaptation_section(tmp_path):
    from cmaam.compare import main

    runs = tmp_path / "results"
    runs.mkdir()
    run_folder(runs, "base", "base", 0.2, 0.5)
    run_folder(runs, "linear_0.5", "baseline", 0.3, 0.4)
    assert main([str(runs), "--output", str(tmp_path / "comparison")]) == 0
    assert "Adaptive merges" not in (tmp_path / "comparison" / "comparison.md").read_text()
