"""Cheaper fitness: item selection on synthetic response matrices with a known answer, the subset estimate,
and a tiny search that calibrates, scores on the subset, rescores the best, and resumes after a crash identically."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from cmaam.core.config import from_dict
from cmaam.core.errors import CMAAMError
from cmaam.search.subset import SubsetSpec, discrimination_index, fit_2pl, select_subset


def simulated_2pl(candidates: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Right/wrong answers of ``candidates`` abilities ~ N(0, 1) to 30 items of known parameters:
    items 0-9 informative (a = 2.5, b in [-0.8, 0.8]), 10-19 barely discriminating (a = 0.15),
    20-29 far too easy or too hard (b = -4 / +4)."""
    generator = np.random.default_rng(seed)
    ability = generator.normal(0, 1, candidates)
    a = np.r_[np.full(10, 2.5), np.full(10, 0.15), np.full(10, 1.5)]
    b = np.r_[np.linspace(-0.8, 0.8, 10), np.linspace(-0.5, 0.5, 10), np.full(5, -4.0), np.full(5, 4.0)]
    probability = 1 / (1 + np.exp(-a * (ability[:, None] - b)))
    return (generator.random(probability.shape) < probability).astype(float), a, b, ability


def ranks(values: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(values))


def test_irt_recovers_the_known_parameters_and_keeps_the_informative_items():
    responses, a, b, ability = simulated_2pl(300)
    fit = fit_2pl(responses)
    assert np.corrcoef(ranks(fit.ability), ranks(ability))[0, 1] > 0.85
    informative = slice(0, 10)
    assert np.corrcoef(ranks(fit.difficulty[informative]), ranks(b[informative]))[0, 1] > 0.9
    assert fit.discrimination[:10].min() > fit.discrimination[10:20].max()  # a = 2.5 vs a = 0.15
    information = fit.information()
    assert information[:10].min() > max(information[10:20].max(), information[20:].max())
    plan = select_subset(responses, SubsetSpec(size=10, rule="irt"))
    assert plan.items == list(range(10)) and plan.rule == "irt"
    assert plan.statistics["information"] == pytest.approx(information.tolist())


def test_a_small_calibration_population_still_finds_most_informative_items():
    responses, *_ = simulated_2pl(16, seed=3)
    assert len(set(select_subset(responses, SubsetSpec(size=10, rule="irt")).items) & set(range(10))) >= 8


def test_discrimination_rule_picks_items_that_follow_the_total_even_with_continuous_scores():
    generator = np.random.default_rng(0)
    skill = generator.random(12)
    following = skill[:, None] * np.array([1.0, 0.8, 0.5])[None, :] + 0.01 * generator.random((12, 3))
    noise = generator.random((12, 5))
    constant = np.full((12, 2), 0.3)
    scores = np.concatenate([noise[:, :2], following[:, :1], constant, following[:, 1:], noise[:, 2:]], axis=1)
    index = discrimination_index(scores)
    assert index[3] == index[4] == 0.0  # no spread, no information
    assert select_subset(scores, SubsetSpec(size=3, rule="discrimination")).items == [2, 5, 6]


def test_the_estimate_is_calibrated_on_the_first_population_and_random_is_seeded():
    scores = np.random.default_rng(2).random((6, 20))
    plan = select_subset(scores, SubsetSpec(size=5, rule="random", seed=4))
    assert plan.items == select_subset(scores, SubsetSpec(size=5, rule="random", seed=4)).items
    assert plan.items != select_subset(scores, SubsetSpec(size=5, rule="random", seed=5)).items
    estimates = [plan.estimate(row[plan.items].mean()) for row in scores]
    assert np.mean(estimates) == pytest.approx(scores.mean(axis=1).mean(), abs=1e-12)


@pytest.mark.parametrize("values, message", [
    ({"size": 0}, "subset: size: must be at least 1"),
    ({"rule": "entropy"}, "subset: rule: unknown 'entropy' \\(choose irt, discrimination, random\\)"),
    ({"threshold": 0}, "subset: threshold: must be in \\(0, 1\\]"),
    ({"sizes": 3}, "subset: sizes: unknown key"),
])
def test_bad_subset_sections(values, message):
    with pytest.raises(CMAAMError, match=message):
        from_dict(SubsetSpec, values, "subset")
    with pytest.raises(CMAAMError, match="not smaller than the 4 items"):
        select_subset(np.zeros((3, 4)), SubsetSpec(size=4))


# -- in a search --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def subset_config(tiny_search, tmp_path_factory) -> dict:
    config = copy.deepcopy(tiny_search)
    config["fitness"].update(limit=6, subset={"size": 2, "rule": "discrimination", "rescore_top": 1})
    config.update(save_model=False, output_dir=str(tmp_path_factory.mktemp("subset") / "reference"))
    return config


@pytest.fixture(scope="module")
def subset_run(subset_config):
    from cmaam.search.evolution import parse_config, run_search

    return run_search(parse_config(subset_config))


def lines(path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        for key in ("merge_seconds", "eval_seconds", "cached"):
            row.pop(key)
    return sorted(rows, key=lambda r: (r["generation"], r["index"]))


def test_search_calibrates_scores_on_the_subset_and_rescores_the_best(subset_run):
    run_dir = subset_run.run_dir
    rows = lines(run_dir / "evaluations.jsonl")
    plan = json.loads((run_dir / "subset.json").read_text())
    first = [r for r in rows if r["generation"] == 0]
    assert len(first) == 4 and all(len(r["item_scores"]) == 6 and "items" not in r for r in first)
    assert plan["rule"] == "discrimination" and len(plan["items"]) == 2
    expected = select_subset([r["item_scores"] for r in first], SubsetSpec(size=2, rule="discrimination"))
    assert plan["items"] == expected.items
    later = [r for r in rows if r["generation"] > 0]
    assert len(later) == 8 and all(r["items"] == "subset" and len(r["item_scores"]) == 2 for r in later)
    for row in later:  # the logged fitness is the subset mean plus the calibration offset
        assert row["fitness"] == pytest.approx(np.mean(row["item_scores"]) + plan["offset"], abs=1e-12)
        assert row["metrics"]["count"] == 2
    rescored = lines(run_dir / "rescored.jsonl")
    assert [(r["generation"], r["metrics"]["count"]) for r in rescored] == [(1, 6), (2, 6)]
    for row in rescored:  # the rescored candidate is each generation's best subset estimate
        generation = [r for r in later if r["generation"] == row["generation"]]
        assert row["index"] == max(generation, key=lambda r: (r["fitness"], -r["index"]))["index"]
    full = first + rescored
    best = max(full, key=lambda r: (r["fitness"], -r["generation"], -r["index"]))
    assert subset_run.best_fitness == best["fitness"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["item_evaluations"] == 4 * 6 + 2 * (4 * 2 + 6)  # against 3 * 4 * 6 = 72 on the full set


def test_a_crash_while_rescoring_then_resume_gives_identical_logs(subset_config, subset_run, tmp_path, monkeypatch):
    from cmaam.search import parallel
    from cmaam.search.evolution import parse_config, run_search

    config = copy.deepcopy(subset_config)
    config["output_dir"] = str(tmp_path / "crashed")
    original = parallel.SequentialEvaluator.map
    calls = []

    def crashing(self, jobs, items=None):
        calls.append(items)
        if len(calls) == 4:  # generation 0, generation 1 (subset), its rescoring (full), generation 2: crash
            raise KeyboardInterrupt
        yield from original(self, jobs, items)

    monkeypatch.setattr(parallel.SequentialEvaluator, "map", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_search(parse_config(config))
    assert calls[1] is not None and calls[2] is None  # the subset, then the full set for the rescoring
    monkeypatch.setattr(parallel.SequentialEvaluator, "map", original)
    resumed = run_search(parse_config(config), resume=True)
    for name in ("evaluations.jsonl", "rescored.jsonl"):
        assert lines(resumed.run_dir / name) == lines(subset_run.run_dir / name)
    assert (resumed.run_dir / "subset.json").read_text() == (subset_run.run_dir / "subset.json").read_text()
    assert resumed.best_genome == subset_run.best_genome


def test_subset_needs_an_item_based_fitness(subset_config):
    from cmaam.search.evolution import parse_config

    config = copy.deepcopy(subset_config)
    config["fitness"] = {"type": "synthetic", "target": 0.4, "subset": {"size": 2}}
    with pytest.raises(CMAAMError, match="fitness.subset: needs an item-based fitness"):
        parse_config(config)
