"""Genome layouts: gene counts (Mistral-7B's 291), parameter mapping, bounds, init and one-line errors."""

from __future__ import annotations

import pytest

from cmaam.core.errors import CMAAMError
from cmaam.search.genome import GenomeLayout, GenomeSpec, layer_index

KINDS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
         "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")


def mistral_names(layers: int = 32) -> list[str]:
    """The tensor names of a Mistral-7B checkpoint (transformers' MistralForCausalLM)."""
    return (["model.embed_tokens.weight"]
            + [f"model.layers.{i}.{kind}.weight" for i in range(layers) for kind in KINDS]
            + ["model.norm.weight", "lm_head.weight"])


def test_mistral_per_tensor_slerp_genome_has_291_genes():
    layout = GenomeLayout(GenomeSpec(method="slerp", granularity="tensor", init=0.33), mistral_names(), ["math"], "ko")
    assert len(layout) == 291 == 32 * 9 + 3
    assert layout.initial() == [0.33] * 291
    lows, highs = layout.bounds()
    assert set(lows) == {0.0} and set(highs) == {1.0}


@pytest.mark.parametrize("granularity, per_group, units",
                         [("layer", 1, 32 + 3), ("group", 4, 8 + 3), ("group", 8, 4 + 3)])
def test_layer_and_group_granularity(granularity, per_group, units):
    layout = GenomeLayout(GenomeSpec(granularity=granularity, layers_per_group=per_group), mistral_names(), ["m"], "b")
    assert len(layout.units) == units == len(layout)
    genome = [i / 100 for i in range(len(layout))]
    # every tensor of one layer (group) reads the same gene; embed/norm/lm_head have their own
    q = layout.parameters_for(genome, "model.layers.5.self_attn.q_proj.weight")["t"]
    down = layout.parameters_for(genome, "model.layers.5.mlp.down_proj.weight")["t"]
    assert q == down
    layer4 = layout.parameters_for(genome, "model.layers.4.mlp.up_proj.weight")["t"]
    assert (layer4 == q) == (granularity == "group")  # layers 4 and 5 share a group of 4 or 8, not a layer
    assert len({layout.parameters_for(genome, n)["t"] for n in ("model.embed_tokens.weight", "model.norm.weight",
                                                                 "lm_head.weight")}) == 3


def test_ties_genome_has_weight_and_density_per_model():
    spec = GenomeSpec(method="ties", granularity="layer", init={"weight": 0.4, "density": 0.7})
    layout = GenomeLayout(spec, mistral_names(), ["ko", "math"], "mistral")
    assert len(layout) == 35 * 2 * 2
    genome = list(range(len(layout)))
    arguments = layout.parameters_for(genome, "model.layers.0.mlp.up_proj.weight")
    unit = layout.units.index("layers.0")
    assert arguments["weight"] == [4 * unit, 4 * unit + 1]
    assert arguments["density"] == [4 * unit + 2, 4 * unit + 3]
    assert layout.initial()[:4] == [0.4, 0.4, 0.7, 0.7]
    assert layout.bounds()[0][:4] == [0.0, 0.0, 0.05, 0.05]
    assert layout.labels[0] == "model.embed_tokens.weight:weight[ko]"


def test_clip_and_layer_index():
    layout = GenomeLayout(GenomeSpec(method="dare_ties", granularity="group", layers_per_group=2,
                                     bounds={"weight": (0.0, 2.0)}), mistral_names(4), ["a"], "b")
    assert layout.clip([-1.0, 0.0] * (len(layout) // 2))[:2] == [0.0, 0.05]
    assert layout.clip([5.0, 5.0])[:2] == [2.0, 1.0]
    assert layer_index("model.layers.12.mlp.up_proj.weight") == 12
    assert layer_index("model.layers_norm.weight") is None and layer_index("lm_head.weight") is None


@pytest.mark.parametrize("spec, models, message", [
    (GenomeSpec(method="slerp"), ["a", "b"], "slerp merges exactly two models"),
    (GenomeSpec(method="ties"), [], "needs at least one model"),
    (GenomeSpec(init=[0.5] * 10), ["a"], "genome.init has 10 values but this model needs 291"),
    (GenomeSpec(init=1.5), ["a"], "outside its bounds"),
    (GenomeSpec(init={"density": 0.5}), ["a"], "unknown parameter(s) density for slerp"),
])
def test_bad_genomes_are_one_line_errors(spec, models, message):
    with pytest.raises(CMAAMError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        GenomeLayout(spec, mistral_names(), models, "base").initial()
    assert "\n" not in str(error.value)


def test_spec_from_dict_rejects_unknown_keys_and_methods():
    assert GenomeSpec.from_dict({"method": "ties", "lambda": 0.8}).lambda_ == 0.8
    with pytest.raises(CMAAMError, match="unknown key"):
        GenomeSpec.from_dict({"sigmaa": 0.1})
    with pytest.raises(CMAAMError, match="unknown method 'slurp'"):
        GenomeSpec.from_dict({"method": "slurp"})
    with pytest.raises(CMAAMError, match="low < high"):
        GenomeSpec.from_dict({"bounds": {"t": [0.6, 0.4]}})
