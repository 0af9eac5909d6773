"""User YAML rule tables: a new architecture classified, ``extends``, and every malformed table refused."""

from __future__ import annotations

import textwrap

import pytest

from cmaam.core.errors import CMAAMError
from cmaam.alignment.alphas import get_strategy
from cmaam.alignment.layouts import ParamInfo, get_layout

RULES = r"""
name: toy_vlm
description: a ViT + resampler + decoder
rules:
  - pattern: 'vit\.blocks\.(?P<block>\d+)\..+'
    component: vision_encoder
    layer: block
  - pattern: 'vit\.(?:patch|pos)_embed\.weight'
    component: vision_encoder
  - pattern: 'resampler\.layers\.(\d+)\..+'
    component: cross_modal_bridge
    stack: resampler
    layer: 1
  - pattern: 'resampler\.out\.weight'
    component: cross_modal_bridge
    bridge_output: true
  - pattern: 'resampler\.out\.bias'
    component: cross_modal_bridge
  - pattern: 'decoder\.tok_embeddings\.weight'
    component: shared_embedding
    input_embedding: true
  - pattern: 'decoder\.(?:final_norm|output)\.weight'
    component: shared_embedding
  - pattern: 'decoder\.blocks\.(\d+)\..+'
    component: language_model
    layer: 1
"""
NAMES = (
    [f"vit.blocks.{b}.{m}.weight" for b in range(3) for m in ("attn", "mlp")]
    + ["vit.patch_embed.weight", "vit.pos_embed.weight"]
    + [f"resampler.layers.{b}.cross_attn.weight" for b in range(2)] + ["resampler.out.weight", "resampler.out.bias"]
    + ["decoder.tok_embeddings.weight", "decoder.final_norm.weight", "decoder.output.weight"]
    + [f"decoder.blocks.{b}.{m}.weight" for b in range(4) for m in ("attention", "feed_forward", "norm")]
)


def write(tmp_path, text, name="rules.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_user_rules_classify_a_new_architecture(tmp_path):
    layout = get_layout(rules_file=write(tmp_path, RULES))
    assert (layout.model_type, layout.description, layout.has_bridge) == \
        ("toy_vlm", "a ViT + resampler + decoder", True)
    assert layout.component_counts(NAMES) == {"vision_encoder": 8, "cross_modal_bridge": 4,
                                              "language_model": 12, "shared_embedding": 3}
    assert layout.classify("vit.blocks.2.mlp.weight") == ParamInfo("vision_encoder", "vision", 2)
    assert layout.classify("resampler.layers.1.cross_attn.weight") == ParamInfo("cross_modal_bridge", "resampler", 1)
    assert layout.classify("decoder.blocks.3.norm.weight") == ParamInfo("language_model", "language", 3)
    assert layout.bridge_outputs(NAMES) == ["resampler.out.weight"]
    assert layout.input_embedding(NAMES) == "decoder.tok_embeddings.weight"
    assert sorted(get_strategy("layerwise").groups(layout.classify_all(NAMES))) == sorted(
        ["vision_encoder", "cross_modal_bridge", "shared_embedding"] + [f"vision.{b}" for b in range(3)]
        + [f"resampler.{b}" for b in range(2)] + [f"language.{b}" for b in range(4)])
    with pytest.raises(CMAAMError, match=r"1 parameter name\(s\) match no rule of the 'toy_vlm' layout: vit\.cls"):
        layout.classify_all(NAMES + ["vit.cls"])


def test_extends_puts_user_rules_before_a_builtin_table(tmp_path):
    path = write(tmp_path, r"""
        extends: Qwen2-VL
        rules:
          - pattern: '(?:model\.)?visual\.deepstack_merger\.(\d+)\..+'
            component: cross_modal_bridge
            stack: deepstack
            layer: 1
          - pattern: 'model\.embed_tokens\.weight'
            component: language_model
    """, "qwen_variant.yaml")
    layout = get_layout(rules_file=path)
    assert layout.model_type == "qwen_variant"
    assert layout.classify("visual.deepstack_merger.2.fc.weight") == ParamInfo("cross_modal_bridge", "deepstack", 2)
    assert layout.classify("model.embed_tokens.weight") == ParamInfo("language_model", "language", None)  # user first
    assert layout.classify("visual.blocks.4.attn.qkv.weight") == ParamInfo("vision_encoder", "vision", 4)
    assert layout.is_bridge_output("visual.merger.mlp.2.weight")


@pytest.mark.parametrize("text, message", [
    ("rules: []", "expected a mapping with a non-empty 'rules' list"),
    ("- pattern: x", "expected a mapping with a non-empty 'rules' list"),
    ("rules: [{pattern: 'a', component: vision}]",
     r"rule 1: rule 'a': unknown component 'vision' \(choose vision_encoder"),
    ("rules: [{pattern: 'a(', component: vision_encoder}]", r"rule 1: rule 'a\(': invalid regular expression"),
    ("rules: [{pattern: 'a', component: vision_encoder}, {pattern: 'b\\.(\\d+)', component: language_model, layer: 2}]",
     r"rule 2: .*layer group 2 is not a capture group of the pattern \(it has 1\)"),
    ("rules: [{pattern: 'b(?P<n>\\d)', component: language_model, layer: block}]",
     "layer group 'block' is not a capture"),
    ("rules: [{pattern: 'a', component: language_model, layers: 1}]", r"rule 1: unknown key\(s\) layers"),
    ("rules: [{component: language_model}]", r"rule 1: 'pattern' is required"),
    ("rules: [{pattern: 'a', component: language_model, layer: 1.5}]", "must be a capture group number or name"),
    ("rules: ['a']", "rule 1: expected a mapping with pattern and component"),
    ("extend: llava\nrules: [{pattern: 'a', component: language_model}]", r"unknown key\(s\) extend"),
    ("extends: blip2\nrules: [{pattern: 'a', component: language_model}]", "unknown model type 'blip2'"),
    ("rules: [{pattern: 'a', component: : x}]", "invalid YAML"),
])
def test_malformed_rules_files_are_refused(tmp_path, text, message):
    with pytest.raises(CMAAMError, match=message):
        get_layout(rules_file=write(tmp_path, text))


def test_rules_file_errors_outside_the_file(tmp_path):
    with pytest.raises(CMAAMError, match="no such rules file"):
        get_layout(rules_file=tmp_path / "missing.yaml")
    with pytest.raises(CMAAMError, match="either a model type or a rules file"):
        get_layout("llava", rules_file=write(tmp_path, RULES))
