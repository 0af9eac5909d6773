"""Tiny end-to-end searches: outputs, sequential == Ray, kill -9 then --resume == uninterrupted, monitor."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from cmaam.io import CheckpointReader
from cmaam.search.fitness import FitnessConfig, build_fitness
from cmaam.search.evolution import parse_config, run_search
from cmaam.monitor import main as monitor_main
from evolve_helpers import finished_run, kill_in_generation_2_then_resume, records, reference_run


@pytest.fixture(scope="module")
def sequential_run(tiny_search, tmp_path_factory):
    """The reference: 3 generations x 4 candidates, sequential, W&B offline."""
    return reference_run(tiny_search, tmp_path_factory.mktemp("evolve") / "sequential", wandb_mode="offline")


def test_tiny_run_writes_every_output(sequential_run):
    config, result = sequential_run
    run_dir = result.run_dir
    state = json.loads((run_dir / "state.json").read_text())
    assert state["done"] and len(state["generations"]) == 3 and state["population"] == 4 and state["genes"] == 21
    rows = records(run_dir)
    assert [(r["generation"], r["index"]) for r in rows] == [(g, i) for g in range(3) for i in range(4)]
    assert len({json.dumps(r["genome"]) for r in rows}) == 12  # twelve distinct candidates, each scored once
    assert all(0 < r["metrics"]["answer_likelihood"] < 1 and r["metrics"]["count"] == 2 for r in rows)
    fitnesses = [r["fitness"] for r in rows]
    assert len(set(fitnesses)) > 1  # the likelihood tie-break separates candidates
    best = max(rows, key=lambda r: r["fitness"])
    assert result.best_fitness == best["fitness"] and result.best_genome == best["genome"]
    for name in ("convergence.png", "genome.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["best_fitness"] == best["fitness"] and metrics["evaluations"] == 12
    assert len((run_dir / "history.jsonl").read_text().splitlines()) >= 3
    assert list((run_dir / "wandb").glob("offline-run-*"))  # W&B offline run on disk
    assert json.loads((run_dir / "best_genome.json").read_text())["genome"] == best["genome"]
    # the saved model is the merge of the best genome: rescoring it in memory gives the logged fitness
    merger = build_fitness(FitnessConfig(type="synthetic", target=best["genome"]),
                           {m["name"]: m["path"] for m in config["models"]}, "language",
                           parse_config(config).genome, parse_config(config).options).merger
    with CheckpointReader(run_dir / "best_model") as saved:
        for name in merger.layout.tensor_names:
            assert torch.equal(saved.get(name), merger.targets[name].detach()), name
    recipe = yaml.safe_load((run_dir / "merge_config.yaml").read_text())
    assert recipe["merge_method"] == "slerp" and len(recipe["slices"]) == 2


def test_ray_with_two_workers_gives_identical_results(sequential_run, tmp_path):
    pytest.importorskip("ray")
    config, reference = sequential_run
    config = copy.deepcopy(config)
    config.update(output_dir=str(tmp_path / "ray"), workers=2, wandb_mode="disabled", save_model=False)
    result = run_search(parse_config(config))
    assert records(result.run_dir) == records(reference.run_dir)
    assert result.best_genome == reference.best_genome and result.best_fitness == reference.best_fitness


def test_kill_9_in_generation_2_then_resume_finishes_like_an_uninterrupted_run(sequential_run, tmp_path):
    config, reference = sequential_run
    config = copy.deepcopy(config)
    config.update(output_dir=str(tmp_path / "killed"), wandb_mode="disabled")
    run_dir = kill_in_generation_2_then_resume(config, tmp_path, population=4)
    rows = records(run_dir)
    assert rows == records(reference.run_dir)  # same candidates, same fitness, same order
    lines = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and not any(line["cached"] for line in lines)  # nothing scored twice
    best = json.loads((run_dir / "best_genome.json").read_text())
    assert best["genome"] == reference.best_genome


def test_monitor_prints_the_history_and_draws_the_curve(sequential_run, capsys):
    _, result = sequential_run
    (result.run_dir / "convergence.png").unlink()
    monitor_main([str(result.run_dir)])
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.strip()[:1].isdigit()]
    assert [int(line.split()[0]) for line in lines[:3]] == [1, 2, 3]
    history = json.loads((result.run_dir / "state.json").read_text())["generations"]
    assert f"{history[2]['best_so_far']:.6g}" in lines[2]
    assert "3/3 generations" in printed and "done" in printed
    assert (result.run_dir / "convergence.png").read_bytes()[:4] == b"\x89PNG"


# -- data-flow space (configs/evolve/tiny_dfs.yaml: two tiny Llamas and their slerp merge in the pool) --
@pytest.fixture(scope="module")
def dataflow_run(tiny_dfs_search, tmp_path_factory):
    return reference_run(tiny_dfs_search, tmp_path_factory.mktemp("dfs") / "sequential")


def test_tiny_dfs_writes_the_path_its_recipe_and_a_model_equal_to_the_search_forward(dataflow_run):
    from transformers import AutoModelForCausalLM

    config, result = dataflow_run
    run_dir = result.run_dir
    state, best = finished_run(run_dir, 3)
    assert state["genes"] == 12 + 7 * 6
    rows = records(run_dir)
    assert [(r["generation"], r["index"]) for r in rows] == [(g, i) for g in range(3) for i in range(4)]
    assert best["genome"] == result.best_genome and best["fold"]["kind"] == "custom"  # tiny Llamas: eps 1e-6
    recipe = yaml.safe_load((run_dir / "merge_config.yaml").read_text())
    assert recipe["merge_method"] == "passthrough" and len(recipe["slices"]) == len(best["path"])
    assert [(s["sources"][0]["layer_range"][0]) for s in recipe["slices"]] == [step["layer"] for step in best["path"]]
    for name in ("convergence.png", "path.png"):
        assert (run_dir / name).read_bytes()[:4] == b"\x89PNG"
    # the written model is the evaluated one: same logits as the in-memory path of the best genome
    parsed = parse_config(config)
    merger = build_fitness(FitnessConfig(type="synthetic", target=best["genome"]),
                           {m["name"]: m["path"] for m in config["models"]}, config["base_model"], parsed.dataflow,
                           parsed.options).merger
    merger.apply(best["genome"])
    assert [[s.model, s.layer, s.scale] for s in merger.steps] == \
        [[step["model"], step["layer"], step["scale"]] for step in best["path"]]
    saved = AutoModelForCausalLM.from_pretrained(run_dir / "best_model", trust_remote_code=True)
    inputs = torch.randint(0, 250, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        difference = (saved(input_ids=inputs).logits - merger.model(input_ids=inputs).logits).abs().max().item()
    assert difference < 1e-5


def test_tiny_dfs_kill_9_in_generation_2_then_resume_is_identical(dataflow_run, tmp_path):
    config, reference = dataflow_run
    config = copy.deepcopy(config)
    config.update(output_dir=str(tmp_path / "killed"), figure_every=0)
    run_dir = kill_in_generation_2_then_resume(config, tmp_path, population=4)
    assert records(run_dir) == records(reference.run_dir)

    def cached(folder: Path) -> list[bool]:
        rows = [json.loads(line) for line in (folder / "evaluations.jsonl").read_text().splitlines()]
        return [r["cached"] for r in sorted(rows, key=lambda r: (r["generation"], r["index"]))]

    assert cached(run_dir) == cached(reference.run_dir)  # nothing scored twice, same path-cache hits
    assert json.loads((run_dir / "best_genome.json").read_text())["path"] == \
        json.loads((reference.run_dir / "best_genome.json").read_text())["path"]


def test_synthetic_dataflow_search_moves_towards_a_target_path(tiny_dfs_search, tmp_path):
    config = copy.deepcopy(tiny_dfs_search)
    layout_genes = 12 + 7 * 6
    target = [0.5 if slot in (0, 3, 4) else -0.5 for slot in range(12)] + [0.8] * (layout_genes - 12)
    config.update(output_dir=str(tmp_path / "synthetic"), generations=4, population=6, save_model=False,
                  fitness={"type": "synthetic", "target": target})
    parsed = parse_config(config)
    result = run_search(parsed)
    fitness = build_fitness(FitnessConfig(type="synthetic", target=target),
                            {m["name"]: m["path"] for m in config["models"]}, config["base_model"], parsed.dataflow,
                            parsed.options)
    start = fitness(fitness.merger.layout.initial()).fitness
    assert fitness(target).fitness == 0.0 and start < 0
    assert start < result.best_fitness <= 0  # closer to the target path than the start
