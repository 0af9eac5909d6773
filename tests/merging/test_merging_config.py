"""mergekit YAML parsing and parameter resolution: gradients, filters, precedence, validation errors."""

from __future__ import annotations

import pytest
import yaml

from cmaam.core.errors import CMAAMError
from cmaam.merging.config_merge import open_readers
from cmaam.merging.mergekit_config import evaluate_setting, parse_merge_config, resolve_setting
from cmaam.merging.planner import plan_merge


def test_gradient_interpolation_matches_hand_values():
    gradient = [0.0, 0.5, 0.3, 0.7, 1.0]
    # 4 intervals: t=0.375 -> 1.5 -> halfway between 0.5 and 0.3
    assert evaluate_setting("x", gradient, 0.375) == pytest.approx(0.4)
    assert evaluate_setting("x", gradient, 0.0) == 0.0 and evaluate_setting("x", gradient, 1.0) == 1.0
    assert evaluate_setting("x", [0.2, 0.8], 1 / 3) == pytest.approx(0.4)
    assert evaluate_setting("x", [True, False, False], 0.4) is True  # discrete: values[int(0.4 * 2)]
    assert evaluate_setting("x", 0.25, 0.9) == 0.25


def test_filters_and_precedence():
    setting = [{"filter": "self_attn", "value": [0, 1]}, {"filter": "mlp", "value": 0.3}]
    assert evaluate_setting("model.layers.1.self_attn.q_proj.weight", setting, 0.25) == pytest.approx(0.25)
    assert evaluate_setting("model.layers.1.mlp.up_proj.weight", setting, 0.25) == 0.3
    assert evaluate_setting("model.norm.weight", setting, 0.0) is None  # no match: the next scope decides
    scopes = ({"t": setting}, {"t": 0.9})
    assert resolve_setting("t", scopes, "model.norm.weight", 0.0) == 0.9
    assert resolve_setting("t", scopes, "model.layers.0.mlp.x", 0.0) == 0.3
    assert resolve_setting("t", ({}, None), "x", 0.0) is None


@pytest.mark.parametrize("document,message", [
    ({"models": [{"model": "a"}]}, "'merge_method' is required"),
    ({"merge_method": "linear"}, "exactly one of 'models' or 'slices'"),
    ({"merge_method": "linear", "models": [{"model": "a", "weight": 1}]}, "models[0]: unknown key 'weight'"),
    ({"merge_method": "linear", "models": [{"model": "a"}], "modules": {}}, "modules"),
    ({"merge_method": "linear", "models": [{"model": "a", "parameters": {"weight": {"bad": 1}}}]},
     "conditional entries need 'value'"),
    ({"merge_method": "passthrough", "slices": [{"sources": [{"model": "a", "layer_range": [2, 1]}]}]},
     "must satisfy 0 <= start < end"),
    ({"merge_method": "slerp", "slices": [{"sources": [{"model": "a", "layer_range": [0, 2]},
                                                      {"model": "b", "layer_range": [0, 3]}]}]},
     "same number of layers"),
    ({"merge_method": "linear", "models": [{"model": "a"}], "tokenizer_source": "base"}, "needs a base_model"),
])
def test_config_errors(document, message):
    with pytest.raises(CMAAMError) as error:
        parse_merge_config(document)
    assert message in str(error.value)


def plan(text: str, models: dict, seed: int = 0):
    config = parse_merge_config(yaml.safe_load(text.format(**{k: str(v) for k, v in models.items()})))
    return plan_merge(config, open_readers(config, None), seed=seed)


def test_planned_parameters_per_layer(family):
    models = family("llama")
    result = plan("""
merge_method: ties
base_model: {base}
models:
  - model: {ft1}
    parameters: {{weight: [1.0, 0.0], density: 0.5}}
  - model: {ft2}
    parameters:
      weight: 0.5
      density: [{{filter: mlp, value: 0.2}}, {{value: 0.9}}]
""", models)
    jobs = {job.output_name: job for job in result.jobs}
    up = jobs["model.layers.1.mlp.up_proj.weight"]
    assert [m for m, _ in up.inputs] == [str(models[k]) for k in ("base", "ft1", "ft2")]  # base first
    parameters = up.merge.keywords["parameters"]
    assert parameters["weight"] == [pytest.approx(2 / 3), 0.5]  # layer 1 of 4: t = 1/3
    assert parameters["density"] == [0.5, 0.2]
    assert jobs["model.embed_tokens.weight"].merge.keywords["parameters"]["weight"] == [1.0, 0.5]  # t = 0
    assert jobs["model.layers.3.self_attn.q_proj.weight"].merge.keywords["parameters"]["density"] == [0.5, 0.9]
    assert result.reference == str(models["base"])


def test_planner_errors(family):
    models = family("llama")
    cases = {
        "exceeds the 4 layers": "merge_method: passthrough\nslices:\n  - sources:\n"
                                "      - {{model: {base}, layer_range: [2, 6]}}\n",
        "needs a base_model": "merge_method: ties\nmodels:\n  - model: {ft1}\n    parameters: {{weight: 1}}\n",
        "missing parameter 'weight'": "merge_method: linear\nmodels:\n  - model: {ft1}\n  - model: {ft2}\n"
                                      "    parameters: {{weight: 1}}\n",
        "appears twice": "merge_method: linear\nslices:\n  - sources:\n"
                         "      - {{model: {ft1}, layer_range: [0, 2]}}\n"
                         "      - {{model: {ft1}, layer_range: [2, 4]}}\n"
                         "parameters: {{weight: 1}}\n",
        "with --seed": "merge_method: dare_ties\nbase_model: {base}\nmodels:\n  - model: {ft1}\n"
                      "parameters: {{weight: 1, seed: 3}}\n",
    }
    for message, text in cases.items():
        with pytest.raises(CMAAMError) as error:
            plan(text, models)
        assert message in str(error.value), (message, str(error.value))
