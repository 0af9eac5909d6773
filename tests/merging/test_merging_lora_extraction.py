"""LoRA extraction: errors at rank r equal the Eckart-Young optimum; the adapter loads with peft and
merge_and_unload gives base + truncated delta (full-rank modules: the fine-tune; left-out modules: the base)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader
from cmaam.io.names import NameIndex
from cmaam.merging.lora_extraction import REPORT_FILE, ExtractionOptions, extract_lora

CPU = ExecutionOptions(device="cpu", progress=False)


def truncated(delta: torch.Tensor, rank: int) -> torch.Tensor:
    """The best rank-``rank`` approximation of ``delta`` (float64 SVD, independent of the extractor)."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def eckart_young(delta: torch.Tensor, rank: int) -> float:
    values = torch.linalg.svdvals(delta.double())
    return math.sqrt(float((values[rank:] ** 2).sum() / (values ** 2).sum()))


@pytest.mark.parametrize("rank", [3, 8, 40])
def test_error_is_the_svd_optimum(rank, tiny_llama_pair, tmp_path):
    base, model = tiny_llama_pair
    report = extract_lora(base, model, tmp_path / "adapter", ExtractionOptions(rank=rank), CPU)
    base_reader, model_reader = CheckpointReader(base), CheckpointReader(model)
    index = NameIndex(model_reader.keys())
    decomposed = [row for row in report.modules if row.kind == "lora"]
    assert len(decomposed) == 14  # 7 linears in each of 2 layers; embeddings, norms and lm_head at full rank
    for row in decomposed:
        name = index.find(row.module + ".weight")
        delta = model_reader.get(name).double() - base_reader.get(name).double()
        assert row.rank == min(rank, *delta.shape)
        assert abs(row.relative_error - eckart_young(delta, row.rank)) < 1e-5, row.module
    saved = json.loads((tmp_path / "adapter" / REPORT_FILE).read_text())
    assert [m["relative_error"] for m in saved["modules"]] == [row.relative_error for row in report.modules]
    if rank == 40:  # k/v projections are 32 x 64: full rank, exact; the pattern says so
        config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
        assert config["r"] == 40 and set(config["rank_pattern"].values()) == {32}
        assert all(row.relative_error < 1e-6 for row in decomposed if row.rank == 32)


def check_peft_roundtrip(base, model, adapter, report, peft_merged):
    """peft's merge_and_unload of the extracted adapter: base + truncated delta on LoRA modules, the fine-tune on
    full-rank modules, the base elsewhere (every tensor checked); reading the adapter as an input agrees."""
    from cmaam.io.adapters import open_model

    merged = peft_merged(base, adapter)
    base_reader, model_reader, adapted = CheckpointReader(base), CheckpointReader(model), open_model(adapter)
    index = NameIndex(base_reader.keys())
    rows = {row.module: row for row in report.modules}
    for runtime_name, actual in merged.items():
        module, _, param = runtime_name.rpartition(".")
        name = index.find(runtime_name)
        row = rows.get(module)
        if row is None:
            expected = base_reader.get(name).double()
        elif row.kind == "full" or param == "bias":
            expected = model_reader.get(name).double()
        else:
            delta = model_reader.get(name).double() - base_reader.get(name).double()
            shift = truncated(delta.T, row.rank).T if row.kind == "embedding_lora" else truncated(delta, row.rank)
            expected = base_reader.get(name).double() + shift
        assert torch.allclose(actual.double(), expected, rtol=0, atol=1e-5), runtime_name
        assert torch.allclose(adapted.get(name), actual, rtol=0, atol=1e-6), runtime_name  # our reader agrees


def test_qwen2vl_adapter_loads_with_peft(tiny_qwen2vl_pair, tmp_path, peft_merged):
    target, model = tiny_qwen2vl_pair
    extraction = ExtractionOptions(rank=6, exclude=[r"visual\.blocks\.1\."], embed_lora=True)
    report = extract_lora(target, model, tmp_path / "adapter", extraction, CPU)
    kinds = {row.module: row.kind for row in report.modules}
    assert kinds["model.language_model.embed_tokens"] == "embedding_lora"  # transformers-5 module names
    assert kinds["model.visual.patch_embed.proj"] == "full"  # Conv3d at full rank
    assert "model.visual.blocks.1.attn.qkv" in report.excluded
    check_peft_roundtrip(target, model, tmp_path / "adapter", report, peft_merged)


def test_biases_of_decomposed_modules(tiny_qwen2, tmp_path, peft_merged):
    from cmaam.testing.tiny import perturb_model

    model = perturb_model(tiny_qwen2, tmp_path / "ft", 0.05, seed=2)
    report = extract_lora(tiny_qwen2, model, tmp_path / "adapter", ExtractionOptions(rank=4), CPU)
    assert sum(row.bias_saved for row in report.modules) == 6  # q, k, v of two layers
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["bias"] == "lora_only"
    check_peft_roundtrip(tiny_qwen2, model, tmp_path / "adapter", report, peft_merged)


def test_extraction_cli(tiny_llama_pair, tiny_qwen2vl, tmp_path, capfd, cli_error):
    from cmaam.extract_lora import main

    base, model = tiny_llama_pair
    out = tmp_path / "adapter"
    assert main(["--base", str(base), "--model", str(model), "--rank", "4", str(out), "--device", "cpu",
                 "--no-progress", "--include", "self_attn"]) == 0
    printed = capfd.readouterr().out
    assert "model.layers.1.self_attn.o_proj" in printed and "8 decomposed" in printed
    for argv, message in [
        (["--rank", "0"], "--rank must be a positive integer"),
        (["--rank", "4", "--base", str(tmp_path / "missing")], "no such model folder"),
        (["--rank", "4", "--base", str(tiny_qwen2vl)], "extraction needs one architecture"),
        (["--rank", "4", "--model", str(base)], "nothing to extract"),
        (["--rank", "4", "--include", "("], "bad module regex"),
    ]:
        full = ["--base", str(base), "--model", str(model), str(tmp_path / "bad"), "--device", "cpu", "--no-progress",
                *argv]
        assert message in cli_error(main, full)
        assert not (tmp_path / "bad").exists()
