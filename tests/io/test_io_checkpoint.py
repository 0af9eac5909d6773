"""Checkpoint reader/writer: single and sharded files, index.json, dtype casts, config and tokenizer files, pickles."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch

from cmaam.io import CheckpointReader, CheckpointWriter, TensorSpec, parse_size, write_state_dict
from cmaam.core.errors import CMAAMError


def tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": torch.randn(50, 16, generator=generator),
        "model.layers.0.mlp.up_proj.weight": torch.randn(32, 16, generator=generator),
        "model.layers.0.input_layernorm.weight": torch.randn(16, generator=generator),
        "model.layers.1.mlp.up_proj.weight": torch.randn(32, 16, generator=generator),
        "position_ids": torch.arange(7),
    }


CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "dtype": "float32",
          "text_config": {"dtype": "float32", "hidden_size": 16}}


def test_single_file_roundtrip_and_header(tmp_path):
    state = tensors()
    output = write_state_dict(tmp_path / "single", state, config=CONFIG)
    assert sorted(p.name for p in output.iterdir()) == ["config.json", "model.safetensors"]
    reader = CheckpointReader(output)
    assert sorted(reader.keys()) == sorted(state)
    for name, tensor in state.items():
        assert reader.shape(name) == tuple(tensor.shape) and reader.dtype(name) == tensor.dtype
        assert reader.numel(name) == tensor.numel()
        assert torch.equal(reader.get(name), tensor)
    assert reader.model_type == "llama"
    # the header is valid safetensors: 8-byte length, JSON, data offsets covering the file
    data = (output / "model.safetensors").read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + length])
    assert 8 + length + max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__") == len(data)


def test_sharded_write_with_index(tmp_path):
    state = tensors()
    output = write_state_dict(tmp_path / "sharded", state, config=CONFIG, max_shard_size=2500)
    shards = sorted(p.name for p in output.glob("*.safetensors"))
    assert len(shards) >= 3 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((output / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(state) and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    for shard in shards:  # each shard holds at most one tensor beyond the limit
        assert (output / shard).stat().st_size <= 2500 + 50 * 16 * 4 + 1024
    reader = CheckpointReader(output)
    assert all(torch.equal(reader.get(name), tensor) for name, tensor in state.items())
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size(123) == 123
    with pytest.raises(CMAAMError):
        parse_size("lots")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dtype_cast_updates_config(dtype, tmp_path):
    state = tensors()
    output = write_state_dict(tmp_path / "cast", state, config=CONFIG, dtype=dtype)
    reader = CheckpointReader(output)
    for name, tensor in state.items():
        expected = tensor.to(dtype) if tensor.is_floating_point() else tensor
        assert reader.dtype(name) == expected.dtype and torch.equal(reader.get(name), expected)
    config = json.loads((output / "config.json").read_text())
    name = str(dtype).replace("torch.", "")
    assert config["dtype"] == name and config["text_config"]["dtype"] == name
    assert torch.equal(reader.get("model.layers.0.input_layernorm.weight", dtype=torch.float32),
                       state["model.layers.0.input_layernorm.weight"].to(dtype).float())


def test_reference_files_copied(tmp_path, tiny_llama):
    base = tiny_llama
    output = write_state_dict(tmp_path / "copy", tensors(), reference=base)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (output / name).read_bytes() == (base / name).read_bytes()
    assert json.loads((output / "config.json").read_text())["model_type"] == "llama"


def test_pickle_refused_then_loaded_weights_only(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    state = tensors()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(CMAAMError, match="--allow-pickle"):
        CheckpointReader(folder)
    reader = CheckpointReader(folder, allow_pickle=True)
    assert all(torch.equal(reader.get(name), tensor) for name, tensor in state.items())
    # weights_only=True: a pickle carrying an arbitrary object is refused even with allow_pickle
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text(json.dumps(CONFIG))
    torch.save({"weight": torch.zeros(2), "payload": CheckpointReader}, evil / "pytorch_model.bin")
    with pytest.raises(CMAAMError, match="weights_only"):
        CheckpointReader(evil, allow_pickle=True).keys()


def test_writer_is_atomic_and_checks_plan(tmp_path):
    output = tmp_path / "atomic"
    specs = [TensorSpec("a", (2, 2), torch.float32), TensorSpec("b", (3,), torch.float32)]
    with pytest.raises(CMAAMError, match="never written"):
        with CheckpointWriter(output, specs, config=CONFIG) as writer:
            writer.add("a", torch.ones(2, 2))
    assert not output.exists() and not list(tmp_path.iterdir())
    with pytest.raises(RuntimeError):
        with CheckpointWriter(output, specs, config=CONFIG) as writer:
            writer.add("a", torch.ones(2, 2))
            raise RuntimeError("boom")
    assert not list(tmp_path.iterdir())
    with pytest.raises(CMAAMError, match="shape"):
        with CheckpointWriter(output, specs, config=CONFIG) as writer:
            writer.add("a", torch.ones(4))
    assert not list(tmp_path.iterdir())


def test_reader_errors(tmp_path):
    with pytest.raises(CMAAMError, match="no such model folder"):
        CheckpointReader(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CMAAMError, match="no config.json"):
        CheckpointReader(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(CMAAMError, match="no weights found"):
        CheckpointReader(tmp_path / "empty")
    output = write_state_dict(tmp_path / "sharded", tensors(), config=CONFIG, max_shard_size=2500)
    next(output.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(CMAAMError, match="listed but missing"):
        CheckpointReader(output)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names open files through /proc")
def test_every_file_is_on_storage_before_the_folder_is_published(tmp_path, monkeypatch, tiny_llama):
    """fsync of each weight, config and copied file, and of the folders, before the rename that publishes them."""
    from cmaam.io import atomic

    synced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    published: list[list[str]] = []
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: published.append(list(synced)) or real_replace(a, b))
    reader = CheckpointReader(tiny_llama)
    tensors = {name: reader.get(name) for name in reader.keys()}
    output = write_state_dict(tmp_path / "out", tensors, reference=tiny_llama, max_shard_size="40KB")
    files = sorted(path.name for path in output.iterdir())
    assert len(files) > 4 and any(name.endswith(".index.json") for name in files)
    assert published, "no rename happened"
    before_rename = {os.path.basename(path) for path in published[0]}
    assert set(files) <= before_rename  # every file, synced while still in the temporary folder
    assert any(".partial-" in os.path.basename(path) for path in published[0])  # the folder itself
    assert str(tmp_path) in synced[len(published[0]):]  # and the parent's entry after the rename
