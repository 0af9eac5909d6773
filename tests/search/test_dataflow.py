"""Data-flow-space search: genome decoding by hand, the in-memory path model, scale folding (exact vs the custom
module, each equal to the in-memory forward within 1e-5), the recipe, PS+DFS models and one-line errors."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from cmaam.core.config import from_dict
from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader
from cmaam.search.dataflow import DataFlowLayout, DataFlowMerger, DataFlowSpec, Step
from cmaam.search.dataflow_export import Fold, dataflow_to_mergekit, plan_fold, write_dataflow_model
from cmaam.search.inmemory import load_model
from cmaam.testing.tiny import TinySize, build_tiny_causal_lm, perturb_model

TOLERANCE = 1e-5


def with_eps(source: Path, folder: Path, eps: float) -> Path:
    """A copy of a model folder whose RMSNorm eps is ``eps``."""
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    config["rms_norm_eps"] = eps
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Two tiny Llamas (a: 2 layers, b: 3 layers), once with RMSNorm eps 1e-6 and once with eps 0."""
    root = tmp_path_factory.mktemp("dataflow")
    a = build_tiny_causal_lm(root / "a", "llama", seed=0)
    b3 = build_tiny_causal_lm(root / "b_raw", "llama", seed=5, size=TinySize(num_hidden_layers=3))
    b = perturb_model(b3, root / "b", 0.3, seed=1)
    return {"eps": {"a": str(a), "b": str(b)},
            "zero": {"a": str(with_eps(a, root / "a0", 0.0)), "b": str(with_eps(b, root / "b0", 0.0))}}


@pytest.fixture(scope="module")
def inputs() -> torch.Tensor:
    return torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(0))


def logits(model, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=inputs, use_cache=False).logits.float()


# -- decoding --------------------------------------------------------------------------------------
def test_transition_genome_decodes_to_the_hand_computed_path():
    layout = DataFlowLayout(DataFlowSpec(repeats=2), {"a": 2, "b": 3}, base_model="a")
    pool = [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("b", 2)]
    assert layout.pool == pool and layout.slots == pool * 2
    assert len(layout) == 10 + 6 * 5  # T = L x repeats include genes + (L + 1) x L transition scales
    include = [-0.5] * 10
    for slot in (1, 2, 6, 9):  # a.1, b.0, then (second repeat) a.1 again and b.2
        include[slot] = 0.3
    scales = [1.0 + 0.01 * k for k in range(30)]  # W[row, column] = 1 + 0.01 (5 row + column)
    steps = layout.decode(include + scales)

    def w(source: int, target: int) -> float:  # source 0 = embeddings, 1 + pool column otherwise
        return 1.0 + 0.01 * (source * 5 + target)

    assert steps == [Step("a", 1, w(0, 1), 1), Step("b", 0, w(1 + 1, 2), 2), Step("a", 1, w(1 + 2, 1), 6),
                     Step("b", 2, w(1 + 1, 4), 9)]
    assert layout.labels[10 + 3] == "scale[embed->b.1]" and layout.labels[10 + 5 + 2] == "scale[a.0->b.0]"


def test_step_and_no_scaling_empty_path_bounds_and_cache_key():
    layout = DataFlowLayout(DataFlowSpec(scaling="step"), {"a": 2, "b": 2}, base_model="b")
    assert len(layout) == 8 and layout.initial() == [-0.2, -0.2, 0.2, 0.2, 1.0, 1.0, 1.0, 1.0]
    assert layout.decode([-0.1, 0.4, -0.9, 0.1, 0.7, 1.3, 0.8, 9.0]) == [Step("a", 1, 1.3, 1), Step("b", 1, 2.0, 3)]
    # no include gene > 0: the largest one runs alone (the earliest among equals)
    assert layout.decode([-0.3, -0.1, -0.1, -0.5, 1, 1, 1, 1]) == [Step("a", 1, 1.0, 1)]
    # genes of slots off the path do not change the key: such candidates share one evaluation
    assert layout.cache_key([0.5, -0.5, -0.5, -0.5, 1.1, 0.3, 0.4, 0.9]) == \
        layout.cache_key([0.9, -0.2, -0.7, -0.1, 1.1, 1.7, 1.2, 0.6])
    none = DataFlowLayout(DataFlowSpec(scaling="none", start="all", repeats=3), {"a": 1, "b": 2}, base_model="a")
    assert len(none) == 9 and none.initial() == [0.2, 0.2, 0.2] + [-0.2] * 6
    assert [(s.model, s.layer, s.scale) for s in none.decode(none.initial())] == [("a", 0, 1.0), ("b", 0, 1.0),
                                                                                  ("b", 1, 1.0)]
    with pytest.raises(CMAAMError, match="needs 9 .*9 include genes \\+ 0 none scales"):
        none.decode([0.0] * 8)


# -- the in-memory path model --------------------------------------------------------------------------
def test_start_genome_is_the_base_model_and_the_kv_cache_works_with_repeated_layers(models, inputs):
    merger = DataFlowMerger(models["eps"], "b", DataFlowSpec(repeats=2))
    base = load_model(models["eps"]["b"], "cpu")
    assert [(s.model, s.layer) for s in merger.apply(merger.layout.initial())] == [("b", 0), ("b", 1), ("b", 2)]
    assert torch.equal(logits(merger.model, inputs), logits(base, inputs))
    genome = [0.3] * 10 + [0.9] * (len(merger.layout) - 10)  # every slot: a.0 a.1 b.0 b.1 b.2 twice
    assert len(merger.apply(genome)) == 10 and merger.model.config.num_hidden_layers == 10
    with torch.no_grad():
        generated = merger.model.generate(input_ids=inputs[:1], max_new_tokens=5, do_sample=False)
        greedy = inputs[:1]
        for _ in range(5):  # without the cache: each position recomputed through the whole path
            following = merger.model(input_ids=greedy, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            greedy = torch.cat([greedy, following], dim=1)
    assert torch.equal(generated, greedy)


# -- folding and the written model ---------------------------------------------------------------------
SCALED_PATH = [0.5, -0.5, 0.5, 0.5, -0.5, 0.5, -0.5, -0.5, 0.5, 0.5]  # a.0 b.0 b.1 | a.0 b.1 b.2


def scaled_genome(layout: DataFlowLayout) -> list[float]:
    return SCALED_PATH + [0.6 + 0.03 * (k % 23) for k in range(layout.scale_genes)]


def written(merger: DataFlowMerger, paths: dict, folder: Path, fold: Fold) -> Path:
    recipe = folder.parent / f"{folder.name}.yaml"
    recipe.write_text(yaml.safe_dump(dataflow_to_mergekit(merger.steps, paths, fold)))
    return write_dataflow_model(recipe, fold, folder, "llama", ExecutionOptions(progress=False))


def configs(paths: dict) -> dict:
    result = {}
    for name, path in paths.items():
        with CheckpointReader(path) as reader:
            result[name] = reader.config
    return result


def test_scales_fold_exactly_into_a_plain_checkpoint_when_eps_is_zero(models, inputs, tmp_path):
    from transformers import AutoModelForCausalLM

    paths = models["zero"]
    merger = DataFlowMerger(paths, "a", DataFlowSpec(repeats=2))
    steps = merger.apply(scaled_genome(merger.layout))
    assert len(steps) == 6 and all(step.scale != 1.0 for step in steps)
    fold = plan_fold(steps, configs(paths))
    assert fold.kind == "exact" and fold.embedding_scale == steps[0].scale
    expected, cumulative = [1.0], 1.0
    for step in steps[1:]:
        cumulative *= step.scale
        expected.append(1 / cumulative)
    assert fold.branch_scales == pytest.approx(expected, rel=1e-12)
    folder = written(merger, paths, tmp_path / "exact", fold)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"
    plain = AutoModelForCausalLM.from_pretrained(folder)  # no custom code
    difference = (logits(plain, inputs) - logits(merger.model, inputs)).abs().max().item()
    assert difference < TOLERANCE, difference
    with CheckpointReader(folder) as saved, CheckpointReader(paths["a"]) as a:  # the embedding carries s_1
        embedding = "model.embed_tokens.weight"
        assert torch.allclose(saved.get(embedding), a.get(embedding) * steps[0].scale)


def test_with_eps_the_scales_go_into_the_custom_module_which_equals_the_search_forward(models, inputs, tmp_path):
    from transformers import AutoModelForCausalLM

    paths = models["eps"]
    merger = DataFlowMerger(paths, "a", DataFlowSpec(repeats=2))
    steps = merger.apply(scaled_genome(merger.layout))
    fold = plan_fold(steps, configs(paths))
    assert fold.kind == "custom" and "eps" in fold.reason and fold.input_scales == [s.scale for s in steps]
    folder = written(merger, paths, tmp_path / "custom", fold)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "cmaam_dataflow" and config["input_scales"] == fold.input_scales
    with pytest.raises(Exception, match="custom code|trust_remote_code"):  # never silently without the scales
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False)
    custom = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    difference = (logits(custom, inputs) - logits(merger.model, inputs)).abs().max().item()
    assert difference < TOLERANCE, difference
    # the reason: the residual fold that is exact with eps 0 is measurably wrong with eps 1e-6
    exact = plan_fold(steps, configs(models["zero"]))
    folded = AutoModelForCausalLM.from_pretrained(written(merger, paths, tmp_path / "forced", exact))
    assert (logits(folded, inputs) - logits(merger.model, inputs)).abs().max().item() > 10 * TOLERANCE


def test_a_first_scale_with_tied_embeddings_is_not_folded():
    steps = [Step("a", 0, 0.8), Step("a", 1, 1.0)]
    assert plan_fold(steps, {"a": {"tie_word_embeddings": True, "rms_norm_eps": 0.0, "model_type": "llama"}}).kind \
        == "custom"
    assert plan_fold(steps, {"a": {"tie_word_embeddings": False, "rms_norm_eps": 1e-6, "model_type": "llama"}}).kind \
        == "exact"


def test_recipe_is_one_passthrough_slice_per_step():
    steps = [Step("a", 1, 0.5), Step("b", 0, 2.0)]
    fold = Fold("exact", 0.5, [1.0, 0.5], [0.5, 2.0], "")
    recipe = dataflow_to_mergekit(steps, {"a": "/m/a", "b": "/m/b"}, fold, dtype="float32")
    assert recipe == {"merge_method": "passthrough", "dtype": "float32", "slices": [
        {"sources": [{"model": "/m/a", "layer_range": [1, 2],
                      "parameters": {"scale": [{"filter": "embed_tokens", "value": 0.5}, {"value": 1.0}]}}]},
        {"sources": [{"model": "/m/b", "layer_range": [0, 1],
                      "parameters": {"scale": [{"filter": "self_attn.o_proj", "value": 0.5},
                                               {"filter": "mlp.down_proj", "value": 0.5}, {"value": 1.0}]}}]}]}


# -- configs and errors --------------------------------------------------------------------------------
def test_models_of_different_width_cannot_be_stacked(models, tmp_path):
    narrow = build_tiny_causal_lm(tmp_path / "narrow", "llama", seed=2,
                                  size=TinySize(hidden_size=32, intermediate_size=64))
    with pytest.raises(CMAAMError, match="differ in hidden_size \\(64 vs 32\\)"):
        DataFlowMerger({"a": models["eps"]["a"], "n": str(narrow)}, "a", DataFlowSpec())


@pytest.mark.parametrize("values, message", [
    ({"scaling": "matrix"}, "dataflow: scaling: unknown 'matrix' \\(choose transition, step, none\\)"),
    ({"repeats": 0}, "dataflow: repeats: must be at least 1"),
    ({"scale_bounds": [0, 2]}, "dataflow: scale_bounds: must satisfy 0 < low < high"),
    ({"scale_init": 3.0}, "dataflow: scale_init: 3.0 is outside scale_bounds"),
    ({"repeat": 2}, "dataflow: repeat: unknown key"),
])
def test_bad_dataflow_sections(values, message):
    with pytest.raises(CMAAMError, match=message):
        from_dict(DataFlowSpec, values, "dataflow")


def test_space_and_sections_must_agree():
    from cmaam.search.evolution import parse_config

    base = {"name": "x", "models": [{"name": "a", "path": "a"}, {"name": "b", "path": "b"}], "base_model": "a"}
    with pytest.raises(CMAAMError, match="space: unknown 'layers' \\(choose parameter, dataflow, alphas\\)"):
        parse_config({**base, "space": "layers"})
    with pytest.raises(CMAAMError, match="dataflow: configures space: dataflow, but space is parameter"):
        parse_config({**base, "dataflow": {"repeats": 2}})
    with pytest.raises(CMAAMError, match="genome: configures space: parameter, but space is dataflow"):
        parse_config({**base, "space": "dataflow", "genome": {"method": "ties"}})
    assert parse_config({**base, "space": "dataflow"}).dataflow == DataFlowSpec()


def test_build_merge_makes_the_parameter_space_model_of_the_pool(tmp_path):
    from cmaam.merging.methods import get_method
    from cmaam.search.evolution import load_config, prepare_models

    config = load_config("tiny_dfs")
    config.output_dir = str(tmp_path / "run")
    paths = prepare_models(config)
    name = "model.layers.1.mlp.up_proj.weight"
    with CheckpointReader(paths["language"]) as a, CheckpointReader(paths["math"]) as b, \
            CheckpointReader(paths["ps"]) as ps:
        expected = get_method("slerp")([b.get(name)], a.get(name), t=0.5)
        assert torch.allclose(ps.get(name), expected, atol=1e-7)
    bad = copy.deepcopy(config)
    bad.output_dir = str(tmp_path / "bad")
    bad.models[2].build = {"merge": {"merge_method": "slerp", "base_model": "nope", "models": ["language"]}}
    with pytest.raises(CMAAMError, match="build.merge names 'nope', not an earlier model"):
        prepare_models(bad)
