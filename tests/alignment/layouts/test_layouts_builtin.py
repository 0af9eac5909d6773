"""Built-in layouts: every parameter of tiny models and of hub name lists classified, counts as computed by hand."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cmaam.alignment.alphas import get_strategy
from cmaam.alignment.layouts import COMPONENTS, ParamInfo, get_layout


def groups(layout, names, strategy):
    """The alpha groups of ``names`` under ``strategy``: {key: [names]}."""
    return get_strategy(strategy).groups(layout.classify_all(names))


DATA = Path(__file__).parent / "data"


def read_names(file_name: str) -> list[str]:
    """The parameter names of a checked-in list (``#`` lines are provenance comments)."""
    lines = (DATA / file_name).read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line and not line.startswith("#")]


# tiny models (cmaam.testing.tiny defaults: LLM hidden 64 x 2 layers, vision hidden 32 x 2 layers)
# qwen2_vl: vision block = qkv, proj, fc1, fc2, norm1, norm2 (weight+bias) = 12, + patch_embed;
#           merger = ln_q, mlp.0, mlp.2 (weight+bias) = 6; Qwen2 LLM layer = 9 weights + 3 q/k/v biases = 12
# qwen2_5_vl: vision block = qkv, proj, gate/up/down_proj (weight+bias) + RMS norm1, norm2 = 12, + patch_embed;
#             merger = ln_q (RMS), mlp.0, mlp.2 (weight+bias) = 5
# llava: CLIP layer = q, k, v, out, fc1, fc2, layer_norm1, layer_norm2 (weight+bias) = 16,
#        + class/patch/position embeddings (3) + pre_layrnorm, post_layernorm (4); Llama layer = 9
# llava_onevision: SigLIP layer = 16, + patch weight/bias, position (3) + post_layernorm (2)
#        + attention-pool head (probe, in_proj w/b, out_proj w/b, layernorm w/b, fc1 w/b, fc2 w/b = 11);
#        projector 4 + image_newline; Qwen2 layer = 12
TINY = {
    "qwen2_vl": dict(counts=(2 * 12 + 1, 6, 2 * 12, 3), per_layer={"vision": 12, "language": 12}),
    "qwen2_5_vl": dict(counts=(2 * 12 + 1, 5, 2 * 12, 3), per_layer={"vision": 12, "language": 12}),
    "llava": dict(counts=(2 * 16 + 7, 4, 2 * 9, 3), per_layer={"vision": 16, "language": 9}),
    "llava_onevision": dict(counts=(2 * 16 + 5 + 11, 5, 2 * 12, 3), per_layer={"vision": 16, "language": 12}),
}
TINY_NAMES = {  # (bridge output, input embedding) as saved on disk, then as transformers 5 names them in memory
    "qwen2_vl": [("visual.merger.mlp.2.weight", "model.embed_tokens.weight"),
                 ("model.visual.merger.mlp.2.weight", "model.language_model.embed_tokens.weight")],
    "llava": [("multi_modal_projector.linear_2.weight", "language_model.model.embed_tokens.weight"),
              ("model.multi_modal_projector.linear_2.weight", "model.language_model.embed_tokens.weight")],
}
TINY_NAMES["llava_onevision"] = TINY_NAMES["llava"]
TINY_NAMES["qwen2_5_vl"] = TINY_NAMES["qwen2_vl"]


def check_counts(layout, names, counts, per_layer, num_layers):
    """Components and (stack, layer) groups hold exactly the expected numbers of tensors."""
    assert layout.component_counts(names) == dict(zip(COMPONENTS, counts))
    infos = layout.classify_all(names)
    by_layer = Counter((info.stack, info.layer) for info in infos.values() if info.layer is not None)
    expected = {(stack, layer): size for stack, size in per_layer.items() for layer in range(num_layers[stack])}
    assert dict(by_layer) == expected


def state_dict_names(folder) -> list[str]:
    """Parameter names of the model as transformers 5 builds it in memory."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(folder))
    return list(model.state_dict())


@pytest.mark.parametrize("model_type", list(TINY))
def test_tiny_vlm_saved_and_in_memory_names(tiny_vlms, model_type):
    from cmaam.io import CheckpointReader

    folder = tiny_vlms[model_type]
    reader = CheckpointReader(folder)
    layout = get_layout(config=folder)  # detected from config.json
    assert layout.model_type == model_type and layout.has_bridge
    in_memory = state_dict_names(folder)
    assert set(in_memory) != set(reader.keys())  # transformers 5 renames on save: both spellings are covered
    for names, (bridge, embedding) in zip((reader.keys(), in_memory), TINY_NAMES[model_type]):
        check_counts(layout, names, TINY[model_type]["counts"], TINY[model_type]["per_layer"],
                     {"vision": 2, "language": 2})
        assert layout.bridge_outputs(names) == [bridge]
        assert layout.input_embedding(names) == embedding


HUB = {  # file -> (model type, tensors per component, {stack: (layers, tensors per layer)}, bridge output, embedding)
    "qwen2_vl_7b_hub.txt": ("qwen2_vl", (32 * 12 + 1, 6, 28 * 12, 3), {"vision": (32, 12), "language": (28, 12)},
                            "visual.merger.mlp.2.weight", "model.embed_tokens.weight"),
    "qwen2_5_vl_3b_transformers5.txt": (
        "qwen2_5_vl", (32 * 12 + 1, 5, 36 * 12, 2), {"vision": (32, 12), "language": (36, 12)},
        "model.visual.merger.mlp.2.weight", "model.language_model.embed_tokens.weight"),
    "llava_1_5_7b_hub.txt": ("llava", (24 * 16 + 7, 4, 32 * 9, 3), {"vision": (24, 16), "language": (32, 9)},
                             "multi_modal_projector.linear_2.weight", "language_model.model.embed_tokens.weight"),
    "llava_1_6_mistral_7b_hub.txt": (
        "llava_next", (24 * 16 + 7, 5, 32 * 9, 3), {"vision": (24, 16), "language": (32, 9)},
        "multi_modal_projector.linear_2.weight", "language_model.model.embed_tokens.weight"),
    "llava_onevision_qwen2_7b_hub.txt": (
        "llava_onevision", (26 * 16 + 5, 5, 28 * 12, 3), {"vision": (26, 16), "language": (28, 12)},
        "multi_modal_projector.linear_2.weight", "language_model.model.embed_tokens.weight"),
    # CogVLM layer: 2 norms + language expert (qkv, dense, 3 MLP) + visual expert (5; CogVLM2 adds a qkv bias);
    # bridge = GLU adapter (6) + boi/eoi (+ conv weight/bias in CogVLM2) + the visual experts
    "cogvlm_chat_hub.txt": ("cogvlm", (63 * 12 + 4, 8 + 32 * 5, 32 * 7, 3),
                            {"vision": (63, 12), "visual_expert": (32, 5), "language": (32, 7)},
                            "model.vision.linear_proj.dense_4h_to_h.weight", "model.embed_tokens.weight"),
    "cogvlm2_llama3_hub.txt": ("cogvlm", (63 * 12 + 4, 10 + 32 * 6, 32 * 7, 3),
                               {"vision": (63, 12), "visual_expert": (32, 6), "language": (32, 7)},
                               "model.vision.linear_proj.dense_4h_to_h.weight", "model.embed_tokens.weight"),
    # mPLUG-Owl2 LLM layer: q, o, rotary inv_freq, 3 MLP + multiway.0 of k, v, 2 norms (10 language) and
    # multiway.1 of k, v, 2 norms (4 visual expert); abstractor layer: 11 modules x (weight, bias)
    "mplug_owl2_llama2_7b_hub.txt": (
        "mplug_owl2", (24 * 12 + 7, 6 * 22 + 4 + 32 * 4, 32 * 10, 3),
        {"vision": (24, 12), "abstractor": (6, 22), "visual_expert": (32, 4), "language": (32, 10)},
        "model.visual_abstractor.visual_fc.weight", "model.embed_tokens.weight"),
}


@pytest.mark.parametrize("file_name", list(HUB))
def test_hub_name_lists(file_name):
    model_type, counts, stacks, bridge, embedding = HUB[file_name]
    names = read_names(file_name)
    layout = get_layout(model_type)
    assert len(names) == sum(counts)
    check_counts(layout, names, counts, {s: size for s, (_, size) in stacks.items()},
                 {s: layers for s, (layers, _) in stacks.items()})
    assert layout.bridge_outputs(names) == [bridge]
    assert layout.input_embedding(names) == embedding


def test_visual_experts_and_multiway_weights():
    cogvlm, owl = get_layout("cogvlm"), get_layout("mplug_owl2")
    assert cogvlm.classify("model.layers.5.self_attn.vision_expert_dense.weight") == \
        ParamInfo("cross_modal_bridge", "visual_expert", 5)
    assert cogvlm.classify("model.layers.5.mlp.language_mlp.up_proj.weight") == \
        ParamInfo("language_model", "language", 5)
    assert owl.classify("model.layers.7.input_layernorm.multiway.1.weight") == \
        ParamInfo("cross_modal_bridge", "visual_expert", 7)
    assert owl.classify("model.layers.7.input_layernorm.multiway.0.weight") == \
        ParamInfo("language_model", "language", 7)
    assert owl.classify("model.visual_abstractor.encoder.layers.3.crossattention.normk.bias") == \
        ParamInfo("cross_modal_bridge", "abstractor", 3)
    assert not owl.is_bridge_output("model.visual_abstractor.visual_fc.bias")


def test_vision_block_and_llm_layer_are_different_groups():
    layout = get_layout("qwen2_vl")
    vision = layout.classify("visual.blocks.3.attn.qkv.weight")
    language = layout.classify("model.language_model.layers.3.mlp.up_proj.weight")
    assert (vision, language) == (ParamInfo("vision_encoder", "vision", 3), ParamInfo("language_model", "language", 3))
    keys = {strategy: (get_strategy(strategy).group_key(vision), get_strategy(strategy).group_key(language))
            for strategy in ("basic", "component", "layerwise", "full")}
    assert keys == {"basic": ("model", "model"), "component": ("vision_encoder", "language_model"),
                    "layerwise": ("vision.3", "language.3"), "full": ("vision_encoder.3", "language_model.3")}


def test_group_keys_of_extra_stacks_and_non_layer_tensors():
    layout = get_layout("mplug_owl2")
    abstractor = layout.classify("model.visual_abstractor.encoder.layers.2.crossattention.norm1.weight")
    expert = layout.classify("model.layers.2.self_attn.k_proj.multiway.1.weight")
    head = layout.classify("lm_head.weight")
    assert [get_strategy(s).group_key(abstractor) for s in ("layerwise", "full")] == \
        ["abstractor.2", "cross_modal_bridge.abstractor.2"]
    assert [get_strategy(s).group_key(expert) for s in ("layerwise", "full")] == \
        ["visual_expert.2", "cross_modal_bridge.visual_expert.2"]
    assert [get_strategy(s).group_key(head) for s in ("component", "layerwise", "full")] == ["shared_embedding"] * 3
    names = read_names("mplug_owl2_llama2_7b_hub.txt")
    assert len(groups(layout, names, "basic")) == 1
    assert len(groups(layout, names, "component")) == 4
    # one group per layer of each stack, plus the components holding non-layer tensors (all LLM tensors are in layers)
    non_layer = ["vision_encoder", "cross_modal_bridge", "shared_embedding"]
    assert len(groups(layout, names, "layerwise")) == 24 + 6 + 32 + 32 + len(non_layer)
    assert set(groups(layout, names, "full")) == set(non_layer) | {
        f"{prefix}.{layer}" for prefix, layers in (("vision_encoder", 24), ("cross_modal_bridge.abstractor", 6),
                                                   ("cross_modal_bridge.visual_expert", 32), ("language_model", 32))
        for layer in range(layers)}


TEXT_EXTRA = {  # keep the mixtures of experts tiny
    "mixtral": {"num_local_experts": 2, "num_experts_per_tok": 1},
    "qwen2_moe": {"num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 16,
                  "shared_expert_intermediate_size": 16},
    "qwen3_moe": {"num_experts": 2, "num_experts_per_tok": 1, "moe_intermediate_size": 16},
}


@pytest.mark.parametrize("model_type", ["llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
                                        "gemma", "gemma2", "phi3"])
def test_text_llms(model_type):
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = TEXT_EXTRA.get(model_type, {})
    config = AutoConfig.for_model(model_type, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=0,
                                  bos_token_id=1, eos_token_id=2, **extra)
    names = list(AutoModelForCausalLM.from_config(config).state_dict())
    layout = get_layout(config=config)  # a PretrainedConfig object
    assert layout.model_type == model_type and not layout.has_bridge
    infos = layout.classify_all(names)
    shared = {n for n, info in infos.items() if info.component == "shared_embedding"}
    assert shared - {"lm_head.weight"} == {"model.embed_tokens.weight", "model.norm.weight"}  # lm_head: when untied
    for name, info in infos.items():
        if name.startswith("model.layers."):
            assert info == ParamInfo("language_model", "language", int(name.split(".")[2]))
    assert {info.layer for info in infos.values()} == {0, 1, 2, None}
    assert layout.bridge_outputs(names) == [] and layout.input_embedding(names) == "model.embed_tokens.weight"


def test_tiny_llama_folder(tiny_llama):
    from cmaam.io import CheckpointReader

    names = CheckpointReader(tiny_llama).keys()
    layout = get_layout(config=tiny_llama / "config.json")
    assert layout.model_type == "llama"
    assert layout.component_counts(names) == {"vision_encoder": 0, "cross_modal_bridge": 0,
                                              "language_model": 2 * 9, "shared_embedding": 3}
