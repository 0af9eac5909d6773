"""The search recovers known coefficients: fitness = distance of the merged weights to a target mix."""

from __future__ import annotations

import copy
import json

import numpy as np

from cmaam.search.evolution import parse_config, run_search

TARGET = [0.2, 0.8, 0.35, 0.65, 0.5]  # per-layer slerp t of lm_head, embed_tokens, layer 0, layer 1, norm


def test_cma_recovers_the_target_coefficients(tiny_search, tmp_path):
    config = copy.deepcopy(tiny_search)
    config["genome"] = {"method": "slerp", "granularity": "layer", "init": 0.5, "sigma": 0.1}
    config["fitness"] = {"type": "synthetic", "target": TARGET}
    config.update(name="synthetic", output_dir=str(tmp_path / "run"), generations=30, population=8, seed=3,
                  save_model=False)
    result = run_search(parse_config(config))
    error = np.abs(np.asarray(result.best_genome) - TARGET)
    assert error.max() < 0.05, (result.best_genome, error)
    assert result.history[-1]["best_so_far"] > result.history[0]["best"]  # it improved
    assert len(result.history) == 30 and result.evaluated == 30 * 8


def test_resume_inside_generation_1_with_a_cut_log_line(tiny_search, tmp_path):
    """A run killed in generation 1 (state.json has no generation yet, the log ends in half a line)
    resumes, scores only the missing candidates and ends exactly like an uninterrupted run."""
    config = copy.deepcopy(tiny_search)
    config["genome"] = {"method": "slerp", "granularity": "layer", "init": 0.5, "sigma": 0.1}
    config["fitness"] = {"type": "synthetic", "target": TARGET}
    config.update(name="synthetic", generations=3, population=6, seed=11, save_model=False)
    reference = run_search(parse_config(dict(config, output_dir=str(tmp_path / "reference"))))

    run_dir = tmp_path / "cut"
    run_search(parse_config(dict(config, output_dir=str(run_dir), generations=1)))
    state = json.loads((run_dir / "state.json").read_text())
    state["generations"], state["done"] = [], False  # as if killed before generation 1 finished
    (run_dir / "state.json").write_text(json.dumps(state))
    log = run_dir / "evaluations.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:4]) + "\n" + lines[4][:30])  # 4 scored, the 5th cut by the kill

    resumed = run_search(parse_config(dict(config, output_dir=str(run_dir))), resume=True)
    assert resumed.evaluated == 3 * 6 - 4
    assert resumed.best_genome == reference.best_genome
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 18 and not any(row["cached"] for row in rows)
    assert [r["best"] for r in resumed.history] == [r["best"] for r in reference.history]
