"""Helpers of the evolve tests: the evaluation log without timings, and kill -9 then --resume of the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPOSITORY = Path(__file__).resolve().parents[2]


def records(run_dir: Path) -> list[dict]:
    """evaluations.jsonl, in (generation, index) order, without timings."""
    rows = [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]
    for row in rows:
        for key in ("merge_seconds", "eval_seconds", "cached"):
            row.pop(key)
    return sorted(rows, key=lambda r: (r["generation"], r["index"]))


def _evolve(config_path: Path, *extra: str) -> subprocess.Popen:
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY), CMAAM_DEBUG="")
    return subprocess.Popen([sys.executable, "-m", "cmaam.evolve", "--config", str(config_path), "--no-progress",
                             *extra], cwd=REPOSITORY, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def kill_in_generation_2_then_resume(config: dict, tmp_path: Path, population: int) -> Path:
    """Start the CLI, kill -9 it once a candidate of generation 2 is logged, check the state, resume."""
    run_dir = Path(config["output_dir"])
    config_path = tmp_path / "config.yaml"
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
    assert population + 1 <= scored_before < 3 * population

    resumed = _evolve(config_path, "--resume")
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    return run_dir


def finished_run(run_dir: Path, generations: int) -> tuple[dict, dict]:
    """(state.json, best_genome.json) of a run that must have finished ``generations`` generations."""
    state = json.loads((run_dir / "state.json").read_text())
    assert state["done"] and len(state["generations"]) == generations
    return state, json.loads((run_dir / "best_genome.json").read_text())


def reference_run(config: dict, folder: Path, **changes) -> tuple[dict, object]:
    """A copy of ``config`` run uninterrupted into ``folder`` with figures each generation: (config, SearchResult)."""
    import copy

    from cmaam.search.evolution import parse_config, run_search

    config = copy.deepcopy(config)
    config.update(output_dir=str(folder), figure_every=1, **changes)
    return config, run_search(parse_config(config))
