"""Adapter folders wherever a model folder is accepted: sweep, mergekit YAML (folder and BASE+LORA), soups, check,
the evaluators' loader; bad adapters are one-line errors with no output."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader
from cmaam.io.adapters import open_model

CPU = ExecutionOptions(device="cpu", progress=False)


def assert_equals_peft(folder, base, adapter, peft_merged):
    """Every tensor of the written ``folder`` equals peft's merge_and_unload of ``adapter`` on ``base``."""
    from cmaam.io.names import NameIndex

    written = CheckpointReader(folder)
    index = NameIndex(written.keys())
    reference = peft_merged(base, adapter)
    assert len(reference) == len(written.keys())
    for runtime_name, expected in reference.items():
        assert torch.allclose(written.get(index.find(runtime_name)), expected, rtol=0, atol=1e-6), runtime_name


def test_sweep_with_adapter_target(tiny_qwen2vl, qwen2vl_adapter, tmp_path, peft_merged):
    from cmaam.merging.sweep import sweep

    (output,) = sweep(tiny_qwen2vl, qwen2vl_adapter, tmp_path / "sweep", "0", CPU)  # alpha 0: the target,
    assert_equals_peft(output, tiny_qwen2vl, qwen2vl_adapter, peft_merged)  # i.e. the adapted model
    for name in ("config.json", "processor_config.json", "tokenizer.json"):  # from the adapter's base
        assert (output / name).read_bytes() == (tiny_qwen2vl / name).read_bytes() or name == "config.json"


@pytest.mark.parametrize("spelling", ["folder", "base+lora"])
def test_mergekit_yaml_with_adapter(spelling, tiny_llama, llama_adapter, tmp_path, peft_merged):
    from cmaam.merging.config_merge import merge_from_config

    model = str(llama_adapter) if spelling == "folder" else f"{tiny_llama}+{llama_adapter}"
    config = tmp_path / "merge.yaml"
    config.write_text(f"merge_method: linear\nmodels:\n  - model: {model}\n    parameters: {{weight: 1.0}}\n"
                      f"  - model: {tiny_llama}\n    parameters: {{weight: 0.0}}\ndtype: float32\n")
    output = merge_from_config(config, tmp_path / "out", CPU)
    assert_equals_peft(output, tiny_llama, llama_adapter, peft_merged)
    assert json.loads((output / "config.json").read_text())["model_type"] == "llama"


def test_soup_and_check_with_adapter(tiny_llama, llama_adapter, tmp_path, capsys):
    from cmaam.check import main as check_main
    from cmaam.merging.soups import uniform_soup

    output = uniform_soup([llama_adapter, tiny_llama], tmp_path / "soup", CPU)
    soup, base, adapted = CheckpointReader(output), CheckpointReader(tiny_llama), open_model(llama_adapter)
    for name in base.keys():
        assert torch.allclose(soup.get(name), (adapted.get(name) + base.get(name)) / 2, rtol=0, atol=1e-7)
    assert check_main([str(llama_adapter), str(tiny_llama)]) == 0
    assert "compatible" in capsys.readouterr().out


def test_evaluator_loads_an_adapter(tiny_llama, llama_adapter, peft_merged):
    from eval.generation import GenerationRequest, HFGenerator

    generator = HFGenerator(llama_adapter, device="cpu", max_new_tokens=4, progress=False)
    reference = peft_merged(tiny_llama, llama_adapter)
    state = generator.model.state_dict()
    for name, expected in reference.items():
        assert torch.allclose(state[name], expected, rtol=0, atol=1e-6), name
    assert len(generator.generate([GenerationRequest("hello")])) == 1


def test_adapter_errors_on_the_command_line(llama_adapter, tiny_llama, tmp_path, cli_error):
    from cmaam.merge import main as merge_main
    from cmaam.sweep import main as sweep_main

    orphan = shutil.copytree(llama_adapter, tmp_path / "orphan")
    config = json.loads((orphan / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (orphan / "adapter_config.json").write_text(json.dumps(config))
    line = cli_error(merge_main, ["--source", str(orphan), "--target", str(tiny_llama), "--output",
                                  str(tmp_path / "out"), "--no-progress"])
    assert "adapter without a base model" in line and "--adapter-base" in line
    line = cli_error(sweep_main, ["--source", str(orphan), "--target", str(tiny_llama), "--alphas", "0.5",
                                  "--output-dir", str(tmp_path / "sweep"), "--adapter-base", str(tmp_path / "nowhere")])
    assert "--adapter-base" in line and "no such model folder" in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "sweep").exists()
