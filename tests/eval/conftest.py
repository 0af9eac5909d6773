"""Fixtures for the evaluator tests: a small VQA data set with real PNG images."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def vqa_folder(tmp_path):
    """A VQA data set folder: images/ (two 32x32 PNGs) and test.jsonl with three questions (en, ko, text-only)."""
    from PIL import Image

    images = tmp_path / "vqa" / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (32, 32), (255, 0, 0)).save(images / "red.png")
    Image.new("RGB", (32, 32), (0, 0, 255)).save(images / "blue.png")
    records = [
        {"id": "q1", "image": "images/red.png", "question": "What color is the square?", "answer": "red",
         "answers": ["red"] * 9 + ["crimson"], "category": "color", "lang": "en"},
        {"id": "q2", "image": "images/blue.png", "question": "이 사각형은 무슨 색입니까?", "answer": "파란색",
         "category": "색상", "lang": "ko"},
        {"id": "q3", "image": None, "question": "How many sides does a square have?", "answer": "4",
         "category": "count", "lang": "en"},
    ]
    path = tmp_path / "vqa" / "test.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def broken_models(tiny_llama, tmp_path_factory):
    """Copies of the tiny Llama broken in one way each (name -> folder), and a tied-embeddings variant that is fine.

    corrupt: model.safetensors overwritten with text; truncated_shard: three shards, the last cut short;
    bad_pickle: pytorch_model.bin that is not a pickle; missing: layer 1's MLP removed; no_lm_head: lm_head removed
    (untied, so it would be random); unexpected: an extra tensor; wrong_shape: a norm of the wrong length;
    tied: tie_word_embeddings with no lm_head in the checkpoint (valid: lm_head is the embedding).
    """
    import json
    import shutil

    import torch

    from cmaam.io import CheckpointReader, write_state_dict

    root = tmp_path_factory.mktemp("broken")
    reader = CheckpointReader(tiny_llama)
    tensors = {name: reader.get(name) for name in reader.keys()}
    models = {}

    def copy(name):
        models[name] = root / name
        shutil.copytree(tiny_llama, models[name])
        return models[name]

    (copy("corrupt") / "model.safetensors").write_text("this is not a safetensors file\n" * 20)
    sharded = write_state_dict(root / "truncated_shard", tensors, reference=tiny_llama, max_shard_size=200_000)
    last = sorted(sharded.glob("model-*-of-*.safetensors"))[-1]
    last.write_bytes(last.read_bytes()[:-1000])
    models["truncated_shard"] = sharded
    pickled = copy("bad_pickle")
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not a pickle")
    edits = {"missing": {k: v for k, v in tensors.items() if "layers.1.mlp" not in k},
             "no_lm_head": {k: v for k, v in tensors.items() if k != "lm_head.weight"},
             "unexpected": {**tensors, "model.extra.weight": torch.zeros(3)},
             "wrong_shape": {**tensors, "model.norm.weight": torch.ones(7)}}
    for name, state in edits.items():
        models[name] = write_state_dict(root / name, state, reference=tiny_llama)
    config = json.loads((tiny_llama / "config.json").read_text())
    models["tied"] = write_state_dict(root / "tied", edits["no_lm_head"], reference=tiny_llama,
                                      config={**config, "tie_word_embeddings": True})
    return models
