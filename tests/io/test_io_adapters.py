"""peft LoRA adapters as inputs: every tensor equals peft's merge_and_unload; bad adapters are one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cmaam.core.errors import CMAAMError
from cmaam.io import CheckpointReader
from cmaam.io.adapters import AdapterReader, open_model
from cmaam.io.names import NameIndex


@pytest.mark.parametrize("kind", ["llama", "qwen2vl"])
def test_adapter_reader_equals_peft_merge_and_unload(kind, tiny_llama, llama_adapter, tiny_qwen2vl, qwen2vl_adapter,
                                                     peft_merged):
    base, adapter = (tiny_llama, llama_adapter) if kind == "llama" else (tiny_qwen2vl, qwen2vl_adapter)
    reference = peft_merged(base, adapter)
    reader = open_model(adapter)
    assert isinstance(reader, AdapterReader) and reader.base_path == base
    plain = CheckpointReader(base)
    index = NameIndex(reader.keys())
    compared, changed = 0, set()
    for runtime_name, expected in reference.items():
        name = index.find(runtime_name)
        assert name is not None, runtime_name
        actual = reader.get(name)
        assert actual.shape == expected.shape and actual.dtype == plain.dtype(name)
        assert torch.allclose(actual, expected, rtol=0, atol=1e-6), name
        compared += 1
        if not torch.equal(actual, plain.get(name)):
            changed.add(name)
    assert compared == len(reader.keys())  # every tensor of the checkpoint was compared
    assert changed == set(reader.patches)  # and exactly the adapted ones differ from the base
    kinds = {entry.kind for entry in reader.patches.values()}
    assert {"matrix", "embedding"} <= kinds
    if kind == "qwen2vl":  # transformers-5 module names mapped onto the hub checkpoint names
        assert "visual.patch_embed.proj.weight" in changed and "model.layers.0.self_attn.v_proj.weight" in changed
        assert any(reader.patches[n].replacement for n in changed)  # lm_head from modules_to_save


def test_adapter_base_option_and_files(tiny_llama, llama_adapter, tmp_path):
    moved = shutil.copytree(llama_adapter, tmp_path / "adapter")
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CMAAMError, match="--adapter-base"):
        open_model(moved)
    reader = open_model(moved, adapter_base=tiny_llama)
    assert reader.reference_folder == tiny_llama
    assert moved / "adapter_model.safetensors" in reader.files and tiny_llama / "model.safetensors" in reader.files


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(use_dora=True), "DoRA"),
    (lambda c: c.update(peft_type="IA3"), "only LoRA"),
    (lambda c: c.pop("base_model_name_or_path"), "adapter without a base model"),
])
def test_bad_adapter_configs(llama_adapter, tmp_path, edit, message):
    moved = shutil.copytree(llama_adapter, tmp_path / "adapter")
    config = json.loads((moved / "adapter_config.json").read_text())
    edit(config)
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CMAAMError, match=message):
        open_model(moved)


def test_adapter_on_the_wrong_base(llama_adapter, tiny_qwen2vl, tmp_path):
    from safetensors.torch import load_file, save_file

    with pytest.raises(CMAAMError, match="does not fit"):  # same names, other shapes (v_proj of another model)
        moved = shutil.copytree(llama_adapter, tmp_path / "a")
        tensors = load_file(moved / "adapter_model.safetensors")
        tensors = {k: (torch.zeros(v.shape[0], 3) if k.endswith("v_proj.lora_A.weight") else v)
                   for k, v in tensors.items()}
        save_file(tensors, moved / "adapter_model.safetensors")
        open_model(moved)
    from cmaam.testing.tiny import TinySize, build_tiny_causal_lm

    one_layer = build_tiny_causal_lm(tmp_path / "one_layer", "llama", size=TinySize(num_hidden_layers=1))
    with pytest.raises(CMAAMError, match=r"changes 'model\.layers\.1\..*which the base model"):
        open_model(llama_adapter, adapter_base=one_layer)
