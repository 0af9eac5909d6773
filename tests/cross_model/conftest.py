"""Fixtures for cross-model merging: peft adapters of the tiny models, a tiny Qwen2 text model, a tiny
LLaVA-OneVision."""

from __future__ import annotations

import pytest

LLAMA_TARGETS = ["q_proj", "v_proj", "down_proj", "embed_tokens"]
QWEN2VL_TARGETS = r".*(q_proj|v_proj|fc1|patch_embed\.proj|embed_tokens)"


@pytest.fixture(scope="session")
def llama_adapter(tiny_llama, tmp_path_factory):
    """A LoRA adapter of the tiny Llama: attention, MLP and embedding LoRA, lm_head in modules_to_save."""
    from cmaam.testing.tiny import build_tiny_adapter

    return build_tiny_adapter(tiny_llama, tmp_path_factory.mktemp("adapters") / "llama_lora", LLAMA_TARGETS,
                              seed=3, modules_to_save=["lm_head"])


@pytest.fixture(scope="session")
def qwen2vl_adapter(tiny_qwen2vl, tmp_path_factory):
    """A LoRA adapter of the tiny Qwen2-VL: language and vision linears, the Conv3d patch embedding, embeddings."""
    from cmaam.testing.tiny import build_tiny_adapter

    return build_tiny_adapter(tiny_qwen2vl, tmp_path_factory.mktemp("adapters") / "qwen2vl_lora", QWEN2VL_TARGETS,
                              seed=4, modules_to_save=["lm_head"], use_rslora=True, r=8, lora_alpha=4,
                              rank_pattern={"v_proj": 2}, alpha_pattern={"fc1": 16})


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    """A tiny Qwen2 text model with the tiny Qwen2-VL's language-model sizes and tokenizer (seed 5)."""
    from cmaam.testing.tiny import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("models") / "qwen2", "qwen2", seed=5)


@pytest.fixture(scope="session")
def tiny_onevision(tmp_path_factory):
    """A tiny LLaVA-OneVision (SigLIP tower, Qwen2 language model) with the tiny Qwen2-VL's LM sizes."""
    from cmaam.testing.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("models") / "onevision", "llava_onevision", seed=6)
