"""Tiny end-to-end searches: outputs, sequential == Ray, kill -9 then --resume == uninterrupted, monitor."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from cmaam.io import CheckpointReader
from cmaam.search.fitness import FitnessConfig, build_fitness
from cmaam.search.evolution import parse_config, run_search
from cmaam.monitor import main as monitor_main

REPOSITORY = Path(__file__).resolve().parents[2]


def records(run_dir: Path) -> list[dict]:
    """evaluations.jsonl, in (generation, index) order, without timings."""
    rows = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    for row in rows:
        for key in ("merge_seconds", "eval_seconds", "cached"):
            row.pop(key)
    return sorted(rows, key=lambda r: (r["generation"], r["index"]))


@pytest.fixture(scope="module")
def sequential_run(tiny_search, tmp_path_factory):
    """The reference: 3 generations x 4 candidates, sequential, W&B offline."""
    config = copy.deepcopy(tiny_search)
    config.update(output_dir=str(tmp_path_factory.mktemp("evolve") / "sequential"), wandb_mode="offline",
                  figure_every=1)
    result = run_search(parse_config(config))
    return config, result


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


def _evolve(config_path: Path, *extra: str) -> subprocess.Popen:
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY), CMAAM_DEBUG="")
    return subprocess.Popen([sys.executable, "-m", "cmaam.evolve", "--config", str(config_path), "--no-progress",
                             *extra], cwd=REPOSITORY, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_kill_9_in_generation_2_then_resume_finishes_like_an_uninterrupted_run(sequential_run, tmp_path):
    config, reference = sequential_run
    config = copy.deepcopy(config)
    run_dir = tmp_path / "killed"
    config.update(output_dir=str(run_dir), wandb_mode="disabled")
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = run_dir / "evaluations.jsonl"
    process = _evolve(config_path)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if log.is_file() and any(json.loads(line)["generation"] == 1 for line in log.read_text().splitlines()
                                 if line.endswith("}")):
            break
        time.sleep(0.02)
    assert process.poll() is None, process.communicate()[0]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    state = json.loads((run_dir / "state.json").read_text())
    assert len(state["generations"]) == 1 and not state["done"]  # killed inside generation 2
    scored_before = len(log.read_text().splitlines())
    assert 5 <= scored_before < 12

    resumed = _evolve(config_path, "--resume")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    rows = records(run_dir)
    assert rows == records(reference.run_dir)  # same candidates, same fitness, same order
    lines = [json.loads(line) for line in log.read_text().splitlines()]
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
