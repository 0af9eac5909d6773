"""--adapt over the sources the merge accepts besides a model of the target's class: a text LLM mapped onto a
VLM's language model (vocabulary rows matched by token) and a peft LoRA adapter. The task vectors are the
merge's own source view minus the target; target-only tensors (vision tower, bridge) get none."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cmaam.alignment.alphas import AlphaConfig
from cmaam.alignment.layouts import get_layout
from cmaam.alignment.merge import Adaptation, merge_vlm
from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader
from cmaam.io.names import NameIndex
from cmaam.search.adaptive import load_merge_space
from adaptive_helpers import vqa_file

QUIET = ExecutionOptions(progress=False)
LAYOUT = get_layout(model_type="qwen2_vl")
TARGET_ONLY = {"vision_encoder", "cross_modal_bridge"}


def captured_space(source, target, output):
    """The merge space the adapter of ``merge_vlm(source, target)`` sees (the plan's alphas are kept)."""
    spaces = []

    def adapt(plan, layout, source_view, target_reader):
        spaces.append(load_merge_space(source_view, target_reader, plan, layout))
        return Adaptation("capture", {}, {})

    merge_vlm(source, target, output, AlphaConfig("layerwise"), QUIET, alphas_only=True, print_summary=False,
              adapt=adapt)
    return spaces[0]


def checkpoint_names(space, target):
    """Runtime parameter name -> the target checkpoint's name of it."""
    index = NameIndex(CheckpointReader(target).keys())
    return {name: index.find(name) for name, _ in space.model.named_parameters()}


def test_adamerging_with_a_text_llm_source_into_qwen2vl(tiny_qwen2, tiny_qwen2vl, tmp_path):
    from cmaam.merge import main

    data = vqa_file(tmp_path / "data")
    assert main(["--source", str(tiny_qwen2), "--target", str(tiny_qwen2vl), "--output", str(tmp_path / "out"),
                 "--strategy", "layerwise", "--no-progress", "--adapt", "adamerging", "--adapt-data", str(data),
                 "--adapt-steps", "3", "--adapt-batch-size", "3", "--adapt-lr", "0.05"]) == 0
    report = json.loads((tmp_path / "out/analysis/report.json").read_text())
    section = report["adaptation"]["groups"]
    assert set(section) == {"language.0", "language.1", "shared_embedding"}  # no vision or bridge group
    assert all(values["changed"] for values in section.values())
    assert any(values["alpha"] != values["initial"] for values in section.values())
    merged, target, source = (load_file(str(folder / "model.safetensors"))
                              for folder in (tmp_path / "out", tiny_qwen2vl, tiny_qwen2))
    kept = [name for name in target if LAYOUT.classify(name).component in TARGET_ONLY]
    assert len(kept) == 31
    for name in kept:  # the target's vision tower and bridge, bit for bit
        assert torch.equal(merged[name], target[name]), name
    name = "model.layers.1.mlp.up_proj.weight"  # the merge used the learned alpha of its group
    assert report["tensors"][name]["group"] == "language.1"
    alpha = section["language.1"]["alpha"]
    assert report["tensors"][name]["alpha"] == alpha
    assert torch.allclose(merged[name], (1 - alpha) * target[name] + alpha * source[name], atol=1e-6)


def test_text_llm_task_vectors_follow_the_merges_vocabulary_alignment(tiny_qwen2, tiny_qwen2vl, tmp_path):
    """tau = the mapped source - T: language tensors by name, embedding rows matched by token (rows of dropped
    tokens are the target's own: tau 0), vision tower and bridge without a task vector."""
    from cmaam.alignment.vocabulary import load_vocabulary
    from cmaam.testing.tiny import retokenize_model

    dropped = ["a", "b", "c", "<video>"]
    source = retokenize_model(tiny_qwen2, tmp_path / "retokenized", drop=dropped,
                              add=[f"<new_{i}>" for i in range(30)])
    space = captured_space(source, tiny_qwen2vl, tmp_path / "alphas")
    source_reader, target_reader = CheckpointReader(source), CheckpointReader(tiny_qwen2vl)
    source_ids, target_ids = load_vocabulary(source), load_vocabulary(tiny_qwen2vl)
    kept = 0
    for name, stored in checkpoint_names(space, tiny_qwen2vl).items():
        target = target_reader.get(stored)
        if LAYOUT.classify(stored).component in TARGET_ONLY:
            expected, kept = torch.zeros_like(target), kept + 1
        elif stored in ("model.embed_tokens.weight", "lm_head.weight"):
            other = source_reader.get(stored)
            expected = torch.stack([torch.zeros_like(target[row]) if token in dropped
                                    else other[source_ids[token]] - target[row]
                                    for token, row in sorted(target_ids.items(), key=lambda item: item[1])])
            assert torch.count_nonzero(expected[[target_ids[token] for token in dropped]]) == 0
        else:
            expected = source_reader.get(stored) - target
        assert (name in space.task_vectors) == bool(torch.count_nonzero(expected)), name
        assert torch.equal(space.task_vectors.get(name, torch.zeros_like(target)), expected), name
    assert kept == 31 and len(space.task_vectors) >= 15
    assert {space.groups[index] for index in space.group_of.values()} == {"language.0", "language.1",
                                                                          "shared_embedding"}


def test_adapter_task_vectors_equal_peft_merge_and_unload(tiny_qwen2vl, qwen2vl_adapter, peft_merged, tmp_path):
    """An adapter source (its base is the target) gives tau = scale * B @ A where peft's merged model differs."""
    space = captured_space(qwen2vl_adapter, tiny_qwen2vl, tmp_path / "alphas")
    reference = peft_merged(tiny_qwen2vl, qwen2vl_adapter)
    changed = 0
    for name, parameter in space.model.named_parameters():
        expected = reference[name] - parameter.detach()
        if name in space.task_vectors:
            changed += 1
            assert torch.allclose(space.task_vectors[name], expected, rtol=0, atol=1e-6), name
        else:
            assert torch.count_nonzero(expected) == 0, name
    groups = {space.groups[index] for index in space.group_of.values()}
    assert changed == 9  # q_proj, v_proj of 2 layers, fc1 of 2 vision blocks, patch embedding, embeddings, lm_head
    assert {"vision.0", "vision.1", "language.0", "language.1", "shared_embedding"} <= groups


def test_mapped_adapter_gives_the_task_vectors_of_its_merged_model(tiny_qwen2, tiny_qwen2vl, peft_merged,
                                                                   tmp_path):
    """A LoRA adapter of the text LLM, mapped onto the VLM, equals the peft-merged full text LLM (within 1e-6)."""
    from cmaam.io import write_state_dict
    from cmaam.testing.tiny import build_tiny_adapter

    adapter = build_tiny_adapter(tiny_qwen2, tmp_path / "lora", ["q_proj", "down_proj", "embed_tokens"], seed=7,
                                 modules_to_save=["lm_head"])
    full = write_state_dict(tmp_path / "full", {name: tensor.contiguous() for name, tensor in
                                                peft_merged(tiny_qwen2, adapter).items()}, reference=tiny_qwen2)
    from_adapter = captured_space(adapter, tiny_qwen2vl, tmp_path / "a").task_vectors
    from_full = captured_space(full, tiny_qwen2vl, tmp_path / "b").task_vectors
    assert set(from_adapter) == set(from_full) and len(from_full) >= 15
    for name, tau in from_full.items():
        assert torch.allclose(from_adapter[name], tau, rtol=0, atol=1e-6), name


def test_a_source_identical_to_the_target_is_refused(tiny_qwen2vl, tiny_qwen2vl_pair, tmp_path):
    """Folders are read by the target's checkpoint names; nothing differing is one clear error."""
    from cmaam.core.errors import CMAAMError

    plan = merge_vlm(tiny_qwen2vl_pair[1], tiny_qwen2vl, tmp_path / "alphas", AlphaConfig("layerwise"), QUIET,
                     alphas_only=True, print_summary=False).plan
    with pytest.raises(CMAAMError, match="identical weights: there is nothing to adapt"):
        load_merge_space(tiny_qwen2vl, tiny_qwen2vl, plan, LAYOUT)


def test_adapter_target_is_the_adapted_model(tiny_qwen2vl, qwen2vl_adapter, peft_merged, tmp_path):
    """An adapter as the target: T is its base with the adapter applied (peft's merged model), tau = base - T."""
    space = captured_space(tiny_qwen2vl, qwen2vl_adapter, tmp_path / "alphas")
    reference = peft_merged(tiny_qwen2vl, qwen2vl_adapter)
    base = CheckpointReader(tiny_qwen2vl)
    assert len(space.task_vectors) == 9
    for name, stored in checkpoint_names(space, tiny_qwen2vl).items():
        assert torch.allclose(dict(space.model.named_parameters())[name], reference[name], rtol=0, atol=1e-6), name
        expected = base.get(stored) - reference[name]
        tau = space.task_vectors.get(name, torch.zeros_like(expected))
        assert torch.allclose(tau, expected, rtol=0, atol=1e-6), name
