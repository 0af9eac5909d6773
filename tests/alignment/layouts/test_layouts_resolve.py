"""Model-type resolution: config.json model_type and architectures, aliases, explicit override, errors."""

from __future__ import annotations

import json

import pytest

from cmaam.core.errors import CMAAMError
from cmaam.alignment.layouts import detect_model_type, get_layout, list_model_types


def test_list_model_types_covers_the_supported_architectures():
    assert {"qwen2_vl", "qwen2_5_vl", "llava", "llava_next", "llava_onevision", "cogvlm", "mplug_owl2",
            "llama", "mistral", "qwen2"} <= set(list_model_types())


@pytest.mark.parametrize("spelling, canonical", [
    ("qwen2_vl", "qwen2_vl"), ("Qwen2-VL", "qwen2_vl"), ("qwen2vl", "qwen2_vl"), ("Qwen2.5-VL", "qwen2_5_vl"),
    ("qwen2_5_vl", "qwen2_5_vl"), ("llava-next", "llava_next"), ("LLaVA-OneVision", "llava_onevision"),
    ("mplugowl", "mplug_owl2"), ("mPLUG-Owl2", "mplug_owl2"), ("mplug_owl2", "mplug_owl2"),
    ("CogVLM2", "cogvlm"), ("Mistral", "mistral"),
])
def test_spellings_and_aliases(spelling, canonical):
    assert get_layout(spelling).model_type == canonical
    assert detect_model_type({"model_type": spelling}) == canonical


@pytest.mark.parametrize("config, expected", [
    ({"model_type": "llava_next", "architectures": ["LlavaNextForConditionalGeneration"]}, "llava_next"),
    ({"architectures": ["CogVLMForCausalLM"],
      "auto_map": {"AutoModelForCausalLM": "modeling_cogvlm.CogVLMForCausalLM"}},
     "cogvlm"),
    ({"model_type": "mplug_owl2_custom", "architectures": ["MPLUGOwl2LlamaForCausalLM"]}, "mplug_owl2"),
    ({"model_type": "qwen2_5_vl"}, "qwen2_5_vl"),
])
def test_detect_from_model_type_then_architectures(config, expected):
    assert detect_model_type(config) == expected


def test_detect_from_folder_and_config_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_onevision"}))
    assert get_layout(config=tmp_path).model_type == "llava_onevision"
    assert get_layout(config=tmp_path / "config.json").model_type == "llava_onevision"


def test_explicit_model_type_overrides_config():
    assert get_layout("llava", config={"model_type": "qwen2_vl"}).model_type == "llava"


def test_unknown_model_type_is_one_clear_error():
    with pytest.raises(CMAAMError, match=r"unknown model type 'blip2'; built-in layouts: qwen2_vl, .*mplug_owl2"):
        get_layout("blip2")
    with pytest.raises(CMAAMError, match=r"no built-in layout for model_type 'blip-2' \(architectures \['Blip2"):
        get_layout(config={"model_type": "blip-2", "architectures": ["Blip2ForConditionalGeneration"]})
    with pytest.raises(CMAAMError, match="no config.json"):
        get_layout(config="/nonexistent/model")
    with pytest.raises(CMAAMError, match="give a model type, a config or a rules file"):
        get_layout()


def test_unclassified_names_are_listed_with_their_count():
    layout = get_layout("qwen2_vl")
    unknown = [f"visual.extra_{index}.weight" for index in range(12)]
    with pytest.raises(CMAAMError) as error:
        layout.classify_all(["visual.blocks.0.attn.qkv.weight", *unknown, "lm_head.weight"])
    message = str(error.value)
    assert message.startswith("12 parameter name(s) match no rule of the 'qwen2_vl' layout: visual.extra_0.weight, ")
    assert "visual.extra_9.weight (and 2 more)" in message and "visual.extra_10" not in message
    with pytest.raises(CMAAMError, match=r"1 parameter name\(s\) match no rule .*: model\.visual\.blocks\.x\.weight;"):
        layout.classify("model.visual.blocks.x.weight")  # a layer index must be a number
    assert not layout.is_bridge_output("visual.extra_0.weight")


def test_rules_match_whole_names_only():
    layout = get_layout("llava")
    for name in ("xmulti_modal_projector.linear_2.weight", "multi_modal_projector.linear_3.weight",
                 "image_newline", "lm_head.weight.extra"):
        with pytest.raises(CMAAMError, match="match no rule"):
            layout.classify(name)
    assert get_layout("llava_next").classify("image_newline").component == "cross_modal_bridge"


def test_several_token_embeddings_are_an_error():
    with pytest.raises(CMAAMError, match="several token-embedding tensors"):
        get_layout("llava").input_embedding(["language_model.model.embed_tokens.weight",
                                             "model.language_model.embed_tokens.weight"])
