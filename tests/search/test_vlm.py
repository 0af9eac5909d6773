"""VLM search over CMAAM group alphas: the start genome is CMAAM's merge, the recipe rewrites the in-memory merge
bit for bit, the weighted VQA objective, one-line config errors, and a tiny run resumed after kill -9 identically."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from cmaam.core.config import from_dict
from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader
from cmaam.search.vlm import AlphaMerger, AlphaSearchSpec, alphas_to_mergekit, plan_alpha_layout


def layout_for(world: dict, **spec):
    readers = {"base": CheckpointReader(world["target"]), "korean": CheckpointReader(world["source"])}
    try:
        return plan_alpha_layout(readers, "base", from_dict(AlphaSearchSpec, spec, "alphas"),
                                 ExecutionOptions(progress=False))
    finally:
        for reader in readers.values():
            reader.close()


def models(world: dict) -> dict:
    return {"base": world["target"], "korean": world["source"]}


def test_the_start_genome_is_cmaams_merge(tiny_vlm_world, tmp_path):
    from cmaam.alignment.alphas import AlphaConfig
    from cmaam.alignment.merge import merge_vlm

    layout = layout_for(tiny_vlm_world, strategy="layerwise", base_alpha=0.6)
    merger = AlphaMerger(models(tiny_vlm_world), layout)
    merger.apply(layout.initial())
    reference = merge_vlm(tiny_vlm_world["source"], tiny_vlm_world["target"], tmp_path / "cmaam",
                          AlphaConfig(strategy="layerwise", base_alpha=0.6), ExecutionOptions(progress=False),
                          print_summary=False)
    assert layout.start == {group: value.alpha for group, value in reference.plan.groups.items()}
    assert len(layout) == len(reference.plan.groups) > 3
    with CheckpointReader(tmp_path / "cmaam") as written:
        for name in written.keys():
            assert torch.equal(written.get(name), merger.targets[name].detach()), name


def test_scale_and_alpha_genes_and_clipping(tiny_vlm_world):
    scale = layout_for(tiny_vlm_world, genes="scale", scale_bounds=[0, 3])
    groups = scale.groups
    genome = [2.5] + [0.5] * (len(scale) - 1)
    alphas = scale.group_alphas(genome)
    assert alphas[groups[0]] == min(1.0, 2.5 * scale.start[groups[0]])
    assert alphas[groups[1]] == pytest.approx(0.5 * scale.start[groups[1]])
    direct = layout_for(tiny_vlm_world, genes="alpha")
    assert direct.initial() == [direct.start[g] for g in direct.groups] and direct.bounds() == ([0.0] * len(direct),
                                                                                              [1.0] * len(direct))
    assert direct.group_alphas([1.7] * len(direct)) == {g: 1.0 for g in direct.groups}  # clipped into [0, 1]


@pytest.mark.parametrize("interp", ["linear", "slerp"])
def test_the_recipe_rewrites_the_in_memory_merge_exactly(tiny_vlm_world, tmp_path, interp):
    from cmaam.merging.config_merge import merge_from_config

    layout = layout_for(tiny_vlm_world, interp=interp)
    merger = AlphaMerger(models(tiny_vlm_world), layout)
    genome = [0.3 + 0.11 * (k % 13) for k in range(len(layout))]
    merger.apply(genome)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(alphas_to_mergekit(layout, genome, models(tiny_vlm_world), dtype="float32")))
    merge_from_config(recipe, tmp_path / "merged", ExecutionOptions(progress=False))
    with CheckpointReader(tmp_path / "merged") as written:
        assert sorted(written.keys()) == sorted(merger.targets)
        for name in written.keys():
            assert torch.equal(written.get(name), merger.targets[name].detach()), name


def test_the_fitness_is_the_weighted_sum_and_the_mean_item_score(tiny_vlm_search):
    from cmaam.search.evolution import parse_config, prepare

    config = copy.deepcopy(tiny_vlm_search)
    config["fitness"].update(limit=5, retention_limit=3, weights={"target": 2.0, "retention": 0.5})
    build, layout, x0, _ = prepare(parse_config(config))
    items, retention = build.keywords["items"], build.keywords["retention_items"]
    assert len(items) == 5 and len(retention) == 3 and items[0].lang == "ko" and retention[0].lang == "en"
    fitness = build()
    result = fitness(x0)
    assert result.metrics["count"] == 8
    expected = 2.0 * result.metrics["target/exact_match"] + 0.5 * result.metrics["retention/exact_match"]
    assert result.fitness == pytest.approx(expected, abs=1e-12)
    assert sum(result.item_scores) / 8 == pytest.approx(expected, abs=1e-12)
    part = fitness(x0, items=[0, 6])  # one Korean, one English item
    assert part.metrics["count"] == 2 and part.item_scores == [result.item_scores[0], result.item_scores[6]]


@pytest.mark.parametrize("change, message", [
    ({"fitness": {"type": "mgsm"}}, "the vqa fitness and space: alphas go together"),
    ({"space": "parameter", "alphas": None}, "the vqa fitness and space: alphas go together"),
    ({"fitness": {"metric": "accuracy"}}, "fitness.metric: for vqa must be one of exact_match"),
    ({"fitness": {"weights": {"target": 1, "english": 1}}}, "fitness.weights: must map target and retention"),
    ({"alphas": {"genes": "offset"}}, "alphas.genes: unknown 'offset' \\(choose scale, alpha\\)"),
    ({"alphas": {"strategy": "tensor"}}, "alphas.strategy: unknown 'tensor'"),
    ({"genome": {"method": "slerp"}}, "genome: configures space: parameter, but space is alphas"),
])
def test_bad_vlm_configs(tiny_vlm_search, change, message):
    from cmaam.search.evolution import parse_config

    config = copy.deepcopy(tiny_vlm_search)
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    with pytest.raises(CMAAMError, match=message):
        parse_config(config)


def test_a_missing_dev_split_is_one_line_before_any_evaluation(tiny_vlm_search, tmp_path):
    from cmaam.search.evolution import parse_config, run_search

    config = copy.deepcopy(tiny_vlm_search)
    config["fitness"]["split"] = "dev"
    config["output_dir"] = str(tmp_path / "run")
    with pytest.raises(CMAAMError, match="dev.jsonl not found"):
        run_search(parse_config(config))
    assert not (tmp_path / "run" / "evaluations.jsonl").exists()


@pytest.fixture(scope="module")
def vlm_run(tiny_vlm_search, tmp_path_factory):
    from evolve_helpers import reference_run

    return reference_run(tiny_vlm_search, tmp_path_factory.mktemp("vlm") / "sequential")


def test_tiny_vlm_run_writes_alphas_recipe_and_the_best_merge(vlm_run):
    from evolve_helpers import finished_run

    from cmaam.search.evolution import parse_config

    config, result = vlm_run
    run_dir = result.run_dir
    state, best = finished_run(run_dir, 3)
    assert set(best["alphas"]) == set(best["cmaam_alphas"]) and len(best["alphas"]) == state["genes"]
    assert (run_dir / "alphas.png").read_bytes()[:4] == b"\x89PNG"
    assert {"target/exact_match", "retention/exact_match", "mean_alpha"} <= set(best["metrics"])
    recipe = yaml.safe_load((run_dir / "merge_config.yaml").read_text())
    assert recipe["merge_method"] == "linear" and recipe["parameters"] == {"normalize": False}
    from cmaam.search.evolution import prepare

    build, *_ = prepare(parse_config(config))
    merger = build().merger
    merger.apply(best["genome"])
    with CheckpointReader(run_dir / "best_model") as saved:
        for name in saved.keys():
            assert torch.equal(saved.get(name), merger.targets[name].detach()), name


def test_tiny_vlm_kill_9_in_generation_2_then_resume_is_identical(vlm_run, tmp_path):
    from evolve_helpers import kill_in_generation_2_then_resume, records

    config, reference = vlm_run
    config = copy.deepcopy(config)
    config.update(output_dir=str(tmp_path / "killed"), figure_every=0)
    run_dir = kill_in_generation_2_then_resume(config, tmp_path, population=4)
    assert records(run_dir) == records(reference.run_dir)
    assert json.loads((run_dir / "best_genome.json").read_text())["alphas"] == \
        json.loads((reference.run_dir / "best_genome.json").read_text())["alphas"]
