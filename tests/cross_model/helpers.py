"""Reference computations shared by the cross-model tests."""

from __future__ import annotations

import torch


def peft_merged_state(base, adapter):
    """peft's reference: the base loaded with transformers, the adapter applied and merged (merge_and_unload)."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(base)
    model_class = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    model = PeftModel.from_pretrained(model_class.from_pretrained(base, dtype=torch.float32), adapter)
    return model.merge_and_unload().state_dict()


class FakeReader:
    """Names, shapes and a config without weights: enough for building a mapping (layouts of models the tiny
    builders do not make, in transformers-4 and -5 spellings)."""

    def __init__(self, path: str, config: dict, shapes: dict[str, tuple[int, ...]]):
        from pathlib import Path

        self.path = self.reference_folder = Path(path)
        self.config = config
        self.shapes = shapes

    @property
    def model_type(self):
        return self.config.get("model_type")

    def keys(self):
        return list(self.shapes)

    def __contains__(self, name):
        return name in self.shapes

    def shape(self, name):
        return self.shapes[name]


def language_model_shapes(prefix: str, lm_head: str = "lm_head.weight", layers: int = 2) -> dict:
    """A two-layer Llama/Qwen2-style language model under ``prefix`` (``model.``, ``model.language_model.``, ...)."""
    shapes = {f"{prefix}embed_tokens.weight": (100, 8), f"{prefix}norm.weight": (8,), lm_head: (100, 8)}
    for layer in range(layers):
        for part, shape in (("self_attn.q_proj.weight", (8, 8)), ("self_attn.k_proj.weight", (4, 8)),
                            ("mlp.down_proj.weight", (8, 16)), ("input_layernorm.weight", (8,))):
            shapes[f"{prefix}layers.{layer}.{part}"] = shape
    return shapes

