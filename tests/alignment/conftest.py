"""Fixtures for the core (scores, alphas, merge, sweep) tests: variants of the tiny Qwen2-VL pair."""

from __future__ import annotations

import pytest

from cmaam.io import CheckpointReader, write_state_dict


def rewrite(source, output, drop=(), add=None, replace=None):
    """Copy a model folder's weights (config, tokenizer, processor too) dropping, adding or replacing tensors."""
    reader = CheckpointReader(source)
    tensors = {name: reader.get(name) for name in reader.keys() if not any(part in name for part in drop)}
    tensors.update(replace or {})
    tensors.update(add or {})
    return write_state_dict(output, tensors, reference=source)


@pytest.fixture(scope="session")
def qwen_pair(tiny_qwen2vl_pair):
    """(target, source) of the tiny Qwen2-VL."""
    return tiny_qwen2vl_pair


@pytest.fixture(scope="session")
def variants(tiny_qwen2vl_pair, tmp_path_factory):
    """Broken or edited copies of the tiny Qwen2-VL target/source for the error and bookkeeping tests."""
    import torch

    target, source = tiny_qwen2vl_pair
    root = tmp_path_factory.mktemp("variants")
    reader = CheckpointReader(target)
    return {
        "no_bridge_target": rewrite(target, root / "no_bridge_t", drop=("merger",)),
        "no_bridge_source": rewrite(source, root / "no_bridge_s", drop=("merger",)),
        "unclassified": rewrite(target, root / "unclassified", add={"model.mystery.weight": torch.ones(3)}),
        "unclassified_source": rewrite(source, root / "unclassified_s", add={"model.mystery.weight": torch.ones(3)}),
        "reshaped": rewrite(source, root / "reshaped", replace={
            "model.norm.weight": torch.ones(reader.shape("model.norm.weight")[0] + 1)}),
        "nan_source": rewrite(source, root / "nan_s", replace={
            "model.layers.0.mlp.up_proj.weight":
                torch.full(reader.shape("model.layers.0.mlp.up_proj.weight"), float("nan"))}),
        # source missing one LLM tensor and holding one extra tensor
        "unmatched_source": rewrite(source, root / "unmatched_s", drop=("model.layers.1.post_attention_layernorm",),
                                    add={"model.extra_adapter.weight": torch.ones(4)}),
    }
