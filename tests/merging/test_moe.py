"""The MoE builder (python -m cmaam.moe) against mergekit-moe run in-process on the same tiny experts: every
tensor and the config equal; the result loads with transformers and generates; bad configs are one-line errors."""

from __future__ import annotations

import json
import re
import string

import pytest
import torch

from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader
from cmaam.merging.moe import build_moe
from merging_helpers import run_cli_module

CPU = ExecutionOptions(device="cpu", progress=False)  # parity with mergekit-moe is checked on the CPU


def options(seed: int = 0) -> ExecutionOptions:
    return ExecutionOptions(device="cpu", progress=False, seed=seed)

MIXTRAL = """
base_model: $base
gate_mode: $mode
dtype: float32
experts:
  - source_model: $ft1
    positive_prompts: ["hello world", "what is 2 + 2?"]
  - source_model: $ft2
    positive_prompts: ["안녕하세요, 반갑습니다"]
    negative_prompts: ["hello"]
"""
QWEN2 = MIXTRAL + """shared_experts:
  - source_model: $base
    positive_prompts: ["a general question"]
"""
# (template, family, gate mode, output class)
CASES = [
    (MIXTRAL, "mistral", "cheap_embed", "MixtralForCausalLM"),
    (MIXTRAL, "mistral", "hidden", "MixtralForCausalLM"),
    (MIXTRAL, "llama", "hidden_avg", "MixtralForCausalLM"),
    (QWEN2, "qwen2", "cheap_embed", "Qwen2MoeForCausalLM"),
    (QWEN2, "qwen2", "hidden", "Qwen2MoeForCausalLM"),
    (QWEN2, "mistral", "cheap_embed", "Qwen2MoeForCausalLM"),  # zero q/k/v biases added
    (MIXTRAL, "qwen3", "hidden", "Qwen3MoeForCausalLM"),
    (MIXTRAL, "mistral", "random", "MixtralForCausalLM"),
]


def write_config(folder, template, models, mode, name="moe.yaml", **extra):
    text = string.Template(template).substitute({**{k: str(v) for k, v in models.items()}, "mode": mode})
    for key, value in extra.items():
        text += f"{key}: {value}\n"
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def run_mergekit_moe(config_path, output, seed=0) -> None:
    import yaml
    from mergekit.moe.config import MoEMergeConfig
    from mergekit.options import MergeOptions
    from mergekit.scripts.moe import build

    options = MergeOptions(random_seed=seed, quiet=True)
    options.apply_global_options()
    build(MoEMergeConfig.model_validate(yaml.safe_load(config_path.read_text())), str(output), options, device="cpu")


@pytest.mark.parametrize("template,model_type,mode,cls", CASES, ids=[f"{c[1]}-{c[2]}-{c[3]}" for c in CASES])
def test_equals_mergekit_moe(template, model_type, mode, cls, family, tmp_path):
    pytest.importorskip("mergekit.moe", reason="mergekit is a dev dependency")
    models = family(model_type)
    config = write_config(tmp_path, template, models, mode)
    ours = build_moe(config, tmp_path / "ours", options(5))
    run_mergekit_moe(config, tmp_path / "mergekit", seed=5)
    a, b = CheckpointReader(ours), CheckpointReader(tmp_path / "mergekit")
    assert sorted(a.keys()) == sorted(b.keys())
    worst = 0.0
    for name in a.keys():
        assert a.dtype(name) == b.dtype(name) and a.shape(name) == b.shape(name), name
        worst = max(worst, (a.get(name).double() - b.get(name).double()).abs().max().item())
    assert worst <= 1e-5, worst
    config_a, config_b = (json.loads((folder / "config.json").read_text()) for folder in (ours, tmp_path / "mergekit"))
    assert config_a == config_b
    assert config_a["architectures"] == [cls]
    # the router really came from the prompts/seed: layers' gates differ between experts
    gate = a.get("model.layers.1.mlp.gate.weight")
    assert gate.shape[0] == 2 and not torch.allclose(gate[0], gate[1])


@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "qwen3"])
def test_loads_and_generates(model_type, family, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models = family(model_type)
    template = QWEN2 if model_type == "qwen2" else MIXTRAL
    output = build_moe(write_config(tmp_path, template, models, "cheap_embed"), tmp_path / "moe", CPU)
    model = AutoModelForCausalLM.from_pretrained(output)
    assert type(model).__name__ == {"mistral": "MixtralForCausalLM", "qwen2": "Qwen2MoeForCausalLM",
                                    "qwen3": "Qwen3MoeForCausalLM"}[model_type]
    tokenizer = AutoTokenizer.from_pretrained(output)
    inputs = tokenizer("안녕 hello", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4
    assert (output / "mergekit_moe_config.yml").is_file()
    assert (output / "tokenizer_config.json").read_text() == (models["base"] / "tokenizer_config.json").read_text()


@pytest.mark.parametrize("model_type", ["mistral", "qwen2"])
def test_experts_equal_to_the_base_give_the_base_model(model_type, family, tmp_path):
    """Every expert = the base's MLP (and the shared expert silenced by residual_scale 0): whatever the router
    picks, the MoE computes the dense base model's logits. Checks the expert layout (gate/up order) end to end."""
    from transformers import AutoModelForCausalLM

    models = family(model_type)
    text = MIXTRAL.replace("$ft1", "$base").replace("$ft2", "$base")
    if model_type == "qwen2":
        text += "shared_experts:\n  - source_model: $ft1\n    positive_prompts: [\"x\"]\n    residual_scale: 0.0\n"
    config = write_config(tmp_path, text, models, "cheap_embed")
    output = build_moe(config, tmp_path / "moe", CPU, allow_identical_experts=True)
    moe = AutoModelForCausalLM.from_pretrained(output).eval()
    dense = AutoModelForCausalLM.from_pretrained(models["base"]).eval()
    tokens = torch.tensor([[5, 17, 99, 200, 3, 42]])
    with torch.no_grad():
        difference = (moe(tokens).logits - dense(tokens).logits).abs().max().item()
    assert difference < 1e-4, difference
    other = AutoModelForCausalLM.from_pretrained(models["ft1"]).eval()
    with torch.no_grad():
        assert (other(tokens).logits - dense(tokens).logits).abs().max().item() > 100 * difference


def test_expert_pieces_stream_one_input_tensor_at_a_time(family, tmp_path, monkeypatch):
    """Stacked expert tensors are written piece by piece: nothing larger than the largest input tensor is
    handed to the writer, and each piece lands at its expert's place."""
    from cmaam.io import writer as writer_module

    models = family("mistral")
    largest = max(CheckpointReader(models["base"]).numel(name) for name in CheckpointReader(models["base"]).keys())
    sizes, parts = [], []
    original_add, original_part = writer_module.CheckpointWriter.add, writer_module.CheckpointWriter.add_part

    def add(self, name, tensor):
        sizes.append(tensor.numel())
        return original_add(self, name, tensor)

    def add_part(self, name, tensor, offset):
        parts.append(tensor.numel())
        return original_part(self, name, tensor, offset)

    monkeypatch.setattr(writer_module.CheckpointWriter, "add", add)
    monkeypatch.setattr(writer_module.CheckpointWriter, "add_part", add_part)
    output = build_moe(write_config(tmp_path, MIXTRAL, models, "random"), tmp_path / "moe", CPU)
    merged = CheckpointReader(output)
    stacked = merged.numel("model.layers.0.mlp.experts.gate_up_proj")
    projection = CheckpointReader(models["base"]).numel("model.layers.0.mlp.up_proj.weight")
    assert max(sizes) <= largest
    assert len(parts) == 4 * 3 * 2 and set(parts) == {projection} and projection * 4 == stacked  # 4 layers
    gate_up = merged.get("model.layers.2.mlp.experts.gate_up_proj")
    down = merged.get("model.layers.2.mlp.experts.down_proj")
    for index, key in enumerate(("ft1", "ft2")):
        source = CheckpointReader(models[key])
        half = gate_up.shape[1] // 2
        assert torch.equal(gate_up[index, :half], source.get("model.layers.2.mlp.gate_proj.weight"))
        assert torch.equal(gate_up[index, half:], source.get("model.layers.2.mlp.up_proj.weight"))
        assert torch.equal(down[index], source.get("model.layers.2.mlp.down_proj.weight"))


def test_random_gates_are_seeded(family, tmp_path):
    models = family("mistral")
    config = write_config(tmp_path, MIXTRAL, models, "random")
    first, again, other = (build_moe(config, tmp_path / name, options(seed))
                           for name, seed in (("a", 3), ("b", 3), ("c", 4)))
    assert (first / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    gate = "model.layers.0.mlp.gate.weight"
    assert not torch.equal(CheckpointReader(first).get(gate), CheckpointReader(other).get(gate))
    assert torch.equal(CheckpointReader(first).get(gate), torch.randn((4, 2, 32), generator=torch.Generator()
                                                                     .manual_seed(3))[0])


def test_noise_and_residual_scale(family, tmp_path):
    models = family("mistral")
    text = MIXTRAL.replace("  - source_model: $ft2\n", "  - source_model: $ft2\n    noise_scale: 0.01\n"
                                                       "    residual_scale: 0.5\n")
    config = write_config(tmp_path, text, models, "random")
    merged = CheckpointReader(build_moe(config, tmp_path / "a", options(1)))
    again = CheckpointReader(build_moe(config, tmp_path / "b", options(1)))
    source = CheckpointReader(models["ft2"])
    down = merged.get("model.layers.1.mlp.experts.down_proj")[1]
    gate_up = merged.get("model.layers.1.mlp.experts.gate_up_proj")[1]
    assert torch.equal(down, again.get("model.layers.1.mlp.experts.down_proj")[1])
    noise = down / 0.5 - source.get("model.layers.1.mlp.down_proj.weight")
    assert 0.005 < noise.std().item() < 0.02  # noise_scale 0.01, then the residual halved
    assert 0.005 < (gate_up[: gate_up.shape[0] // 2] - source.get("model.layers.1.mlp.gate_proj.weight")).std() < 0.02
    first = CheckpointReader(models["ft1"]).get("model.layers.1.mlp.down_proj.weight")
    assert torch.equal(merged.get("model.layers.1.mlp.experts.down_proj")[0], first)  # expert 0 untouched


ERRORS = [
    ("gate_mode: nearest", None, "gate_mode: unknown 'nearest'"),
    ("", ("positive_prompts: [\"hello world\", \"what is 2 + 2?\"]", "positive_prompts: []"),
     "moe.yaml: experts[0].positive_prompts: gate_mode cheap_embed needs non-empty prompts"),
    ("", ("positive_prompts: [\"hello world\", \"what is 2 + 2?\"]", "positive_prompts: [\"  \"]"),
     "experts[0].positive_prompts: gate_mode cheap_embed needs non-empty prompts"),
    ("experts_per_token: 3", None, "moe.yaml: experts_per_token: is 3 but only 2 expert(s) are listed"),
    ("experts_per_token: 0", None, "experts_per_token: must be at least 1"),
    ("routing: top2", None, "moe.yaml: routing: unknown key"),
    ("dtype: float8", None, "dtype: unknown dtype 'float8'"),
    ("architecture: deepseek", None, "DeepSeek MoE output is not supported"),
    ("architecture: qwen3_moe", None, "Qwen3-MoE needs qwen3 models"),
    ("", ("$ft2", "$other"), "is a qwen2 model but the base model is mistral"),
    ("", ("$ft2", "$wide"), "has shape (96, 32), the base model's is (64, 32)"),
    ("", ("$ft2", "$missing"), "nowhere: no such model folder"),
]


@pytest.mark.parametrize("extra,replace,message", ERRORS, ids=[e[2][:30] for e in ERRORS])
def test_bad_configs_are_one_line_errors(extra, replace, message, family, tmp_path):
    from cmaam.testing.tiny import TinySize, build_tiny_causal_lm

    models = dict(family("mistral"), other=family("qwen2")["ft1"], missing=tmp_path / "nowhere")
    models["wide"] = tmp_path / "wide"
    if "$wide" in (replace or ("", ""))[1]:
        build_tiny_causal_lm(models["wide"], "mistral", size=TinySize(hidden_size=32, intermediate_size=96,
                                                                      num_hidden_layers=4, num_attention_heads=4,
                                                                      num_key_value_heads=2))
    text = MIXTRAL if replace is None else MIXTRAL.replace(*replace)
    config = write_config(tmp_path, text + extra + "\n", models, "cheap_embed")
    with pytest.raises(CMAAMError, match=re.escape(message)):
        build_moe(config, tmp_path / "out", CPU)
    assert not (tmp_path / "out").exists()


def test_qwen2_experts_without_a_shared_expert_fit_no_architecture(family, tmp_path):
    config = write_config(tmp_path, MIXTRAL, family("qwen2"), "cheap_embed")
    with pytest.raises(CMAAMError, match="no MoE output architecture fits this config: Mixtral .*needs llama or "
                                         "mistral models; Qwen2-MoE needs exactly 1 shared expert"):
        build_moe(config, tmp_path / "out", CPU)


def test_cli_error_is_one_line_and_inputs_untouched(family, tmp_path):
    models = family("mistral")
    config = write_config(tmp_path, MIXTRAL, models, "hidden", name="bad.yaml", gate_mode="nearest")
    result = run_cli_module("cmaam.moe", config, tmp_path / "out")
    assert result.returncode == 2 and result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
    before = (models["base"] / "model.safetensors").read_bytes()
    good = write_config(tmp_path, MIXTRAL, models, "random", name="good.yaml")
    result = run_cli_module("cmaam.moe", good, models["base"], "--overwrite")  # output = an input
    assert result.returncode == 2 and "error:" in result.stderr
    assert (models["base"] / "model.safetensors").read_bytes() == before
    result = run_cli_module("cmaam.moe", good, tmp_path / "moe", "--no-progress", "--seed", "2")
    assert result.returncode == 0, result.stderr
    assert "MoE model written to" in result.stdout
    assert CheckpointReader(tmp_path / "moe").config["num_local_experts"] == 2


def test_hidden_gates_hold_one_layer_at_a_time(family):
    """The hidden-state forward pass loads each decoder layer just before it runs and drops it after, and
    gives the hidden states of the model loaded whole."""
    from transformers import AutoModelForCausalLM

    from cmaam.merging.moe.gates import LayerStreamedDecoder, load_tokenizer, tokenize

    models = family("qwen2")
    streamed = LayerStreamedDecoder(str(models["base"]), CheckpointReader(models["base"]))
    alive = []

    def count(module, args):
        alive.append(sum(not p.is_meta for layer in streamed.decoder.layers for p in layer.parameters()))

    for layer in streamed.decoder.layers:
        layer.register_forward_pre_hook(count)  # runs after the loading hook
    tokens = tokenize(["hello world", "안녕"], load_tokenizer(str(models["base"])))
    with torch.no_grad():
        ours = streamed(**tokens).hidden_states
    per_layer = sum(1 for _ in streamed.decoder.layers[0].parameters())
    assert alive == [per_layer] * len(streamed.decoder.layers)
    assert all(p.is_meta for layer in streamed.decoder.layers for p in layer.parameters())
    whole = AutoModelForCausalLM.from_pretrained(models["base"], dtype=torch.bfloat16)
    with torch.no_grad():
        reference = whole(**tokens, output_hidden_states=True).hidden_states
    assert len(ours) == len(reference) and all(torch.equal(a, b) for a, b in zip(ours, reference))


def test_hidden_gates_need_prompts(family, tmp_path):
    text = MIXTRAL.replace('    positive_prompts: ["안녕하세요, 반갑습니다"]\n', "")
    config = write_config(tmp_path, text, family("mistral"), "hidden")
    with pytest.raises(CMAAMError, match=re.escape("moe.yaml: experts[1].positive_prompts: gate_mode hidden needs "
                                                   "non-empty prompts (or use gate_mode: random)")):
        build_moe(config, tmp_path / "out", CPU)
    assert not (tmp_path / "out").exists()
