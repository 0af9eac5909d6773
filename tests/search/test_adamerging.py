"""AdaMerging on tiny models: the entropy gradient against finite differences, held-out entropy,
seeded byte-identical results, the merge CLI's --adapt flags and report."""

from __future__ import annotations

import json

import pytest
import torch

from cmaam.alignment.alphas import AlphaConfig
from cmaam.alignment.layouts import get_layout
from cmaam.alignment.merge import merge_vlm
from cmaam.core.options import ExecutionOptions
from cmaam.search.adamerging import AdaMergingConfig, adamerging, answer_entropy, mean_entropy
from cmaam.search.adaptive import UnlabeledInput, initial_coefficients, load_merge_space, load_unlabeled
from eval.generation import GenerationRequest
from adaptive_helpers import vqa_file

QUIET = ExecutionOptions(progress=False)
PROMPTS = ["What is two plus two?", "Name a colour.", "Translate 'cat' into Korean.", "Count to three.",
           "Which is larger, 7 or 9?", "Say hello.", "What day comes after Monday?", "Spell 'dog'.",
           "Give a fruit.", "What is the capital of Korea?", "Finish: one, two, ...", "Is ice cold?"]


def text_inputs(prompts):
    return [UnlabeledInput(f"p{i}", GenerationRequest(text=p)) for i, p in enumerate(prompts)]


@pytest.fixture(scope="module")
def llama_plan(tiny_llama_pair, tmp_path_factory):
    target, source = tiny_llama_pair
    folder = tmp_path_factory.mktemp("plan")
    return merge_vlm(source, target, folder / "alphas", AlphaConfig("layerwise", base_alpha=0.5), QUIET,
                     alphas_only=True, print_summary=False).plan


def space64(tiny_llama_pair, plan):
    target, source = tiny_llama_pair
    return load_merge_space(source, target, plan, get_layout(model_type="llama"), dtype=torch.float64)


@pytest.fixture
def float64_llama(monkeypatch):
    """Llama's RMSNorm computes in float32 whatever the model dtype; this keeps it in the input dtype, so a
    float64 model is float64 end to end (SDPA attention already is) and finite differences are exact enough."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    def forward(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * hidden_states * torch.rsqrt(variance + self.variance_epsilon)

    monkeypatch.setattr(LlamaRMSNorm, "forward", forward)


@pytest.mark.parametrize("answer_tokens", [1, 3])
def test_entropy_gradient_matches_central_differences(tiny_llama_pair, llama_plan, float64_llama, answer_tokens):
    space = space64(tiny_llama_pair, llama_plan)
    generator = space.generator(4, 1)
    encoded = generator.encode([item.request for item in text_inputs(PROMPTS[:4])])
    eos = space.processor.eos_token_id
    start = torch.tensor(initial_coefficients(llama_plan, space, None), dtype=torch.float64)
    coefficients = start.clone().requires_grad_(True)
    answer_entropy(space, coefficients, encoded, answer_tokens, eos).mean().backward()
    assert len(space.groups) >= 3 and coefficients.grad.abs().max() > 1e-6
    step = 1e-6
    for index in range(len(space.groups)):
        up, down = start.clone(), start.clone()
        up[index] += step
        down[index] -= step
        with torch.no_grad():
            difference = (answer_entropy(space, up, encoded, answer_tokens, eos).mean()
                          - answer_entropy(space, down, encoded, answer_tokens, eos).mean()) / (2 * step)
        assert float(coefficients.grad[index]) == pytest.approx(float(difference), rel=1e-5, abs=1e-9)


def test_functional_merge_equals_the_written_merge(tiny_llama_pair, llama_plan, tmp_path):
    """The in-memory model at the plan's alphas is the model cmaam.merge writes (same logits)."""
    from transformers import AutoModelForCausalLM

    target, source = tiny_llama_pair
    merge_vlm(source, target, tmp_path / "merged", AlphaConfig("layerwise", base_alpha=0.5), QUIET,
              print_summary=False)
    space = load_merge_space(source, target, llama_plan, get_layout(model_type="llama"))
    encoded = space.generator(4, 1).encode([item.request for item in text_inputs(PROMPTS[:4])])
    coefficients = torch.tensor(initial_coefficients(llama_plan, space, None))
    with torch.no_grad():
        functional = space.forward(coefficients, encoded)
        written = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(**encoded).logits
    assert torch.allclose(functional, written, atol=1e-5)


def test_adamerging_lowers_the_entropy_of_held_out_inputs(tiny_llama_pair, llama_plan):
    space = load_merge_space(*reversed(tiny_llama_pair), llama_plan, get_layout(model_type="llama"))
    train, held_out = text_inputs(PROMPTS[:8]), text_inputs(PROMPTS[8:])
    result = adamerging(space, train, initial_coefficients(llama_plan, space, None),
                        AdaMergingConfig(steps=30, lr=0.05, batch_size=4, progress=False), held_out)
    assert result.entropy["adapt"]["after"] < result.entropy["adapt"]["before"]
    assert result.entropy["held_out"]["after"] < result.entropy["held_out"]["before"]
    assert result.entropy["held_out"]["inputs"] == 4 and len(result.curve) == 30
    assert all(0.0 <= a <= 1.0 for a in result.alphas) and result.alphas != result.initial
    # the reported figures are what the learned coefficients give
    assert mean_entropy(space, result.alphas, held_out, 4, 1) == pytest.approx(result.entropy["held_out"]["after"])


def test_coefficients_stay_in_the_unit_box(tiny_llama_pair, llama_plan):
    space = load_merge_space(*reversed(tiny_llama_pair), llama_plan, get_layout(model_type="llama"))
    result = adamerging(space, text_inputs(PROMPTS), [1.0] * len(space.groups),
                        AdaMergingConfig(steps=5, lr=0.5, batch_size=6, progress=False))
    assert all(0.0 <= a <= 1.0 for a in result.alphas)


def adapt_cli(pair, output, data, *extra):
    from cmaam.merge import main

    target, source = pair
    return main(["--source", str(source), "--target", str(target), "--output", str(output), "--strategy", "full",
                 "--no-progress", "--adapt", "adamerging", "--adapt-data", str(data), "--adapt-steps", "3",
                 "--adapt-batch-size", "3", "--adapt-lr", "0.05", *extra])


def test_same_seed_gives_byte_identical_adapted_alphas_on_a_vlm(tiny_qwen2vl_pair, tmp_path):
    data = vqa_file(tmp_path / "data")
    for run in ("one", "two"):
        assert adapt_cli(tiny_qwen2vl_pair, tmp_path / run, data, "--seed", "3") == 0
    first, second = (tmp_path / r / "alphas.yaml" for r in ("one", "two"))
    assert first.read_bytes() == second.read_bytes()
    assert (tmp_path / "one/analysis/report.json").read_bytes() == (tmp_path / "two/analysis/report.json").read_bytes()
    assert (tmp_path / "one/model.safetensors").read_bytes() == (tmp_path / "two/model.safetensors").read_bytes()
    assert adapt_cli(tiny_qwen2vl_pair, tmp_path / "other_seed", data, "--seed", "4") == 0
    report = json.loads((tmp_path / "one/analysis/report.json").read_text())
    other = json.loads((tmp_path / "other_seed/analysis/report.json").read_text())
    assert report["adaptation"]["entropy_curve"] != other["adaptation"]["entropy_curve"]


def test_the_report_holds_the_learned_alphas_curve_and_plot(tiny_qwen2vl_pair, tmp_path):
    from safetensors.torch import load_file

    data = vqa_file(tmp_path / "data")
    held_out = vqa_file(tmp_path / "held", count=3)
    assert adapt_cli(tiny_qwen2vl_pair, tmp_path / "out", data, "--adapt-held-out", str(held_out)) == 0
    report = json.loads((tmp_path / "out/analysis/report.json").read_text())
    section = report["adaptation"]
    assert report["settings"]["adapt"] == "adamerging" and len(section["entropy_curve"]) == 3
    assert set(section["entropy"]) == {"adapt", "held_out"} and section["entropy"]["held_out"]["inputs"] == 3
    for group, values in section["groups"].items():
        assert report["groups"][group]["alpha"] == values["alpha"]  # the merge used the learned alphas
    assert (tmp_path / "out/analysis/adaptation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Adaptation: AdaMerging" in (tmp_path / "out/analysis/report.md").read_text()
    # the written weights follow (1 - alpha) T + alpha S with the learned alpha of their group
    target, source = tiny_qwen2vl_pair
    merged, t, s = (load_file(str(folder / "model.safetensors")) for folder in (tmp_path / "out", target, source))
    name = "model.layers.1.mlp.up_proj.weight"
    alpha = report["tensors"][name]["alpha"]
    assert report["tensors"][name]["group"] == "language_model.1"
    assert torch.allclose(merged[name], (1 - alpha) * t[name] + alpha * s[name], atol=1e-6)


def test_unlabeled_inputs_accept_vqa_prompt_jsonl_and_text(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"text": "b", "lang": "ko"}\n')
    (tmp_path / "p.txt").write_text("first\n\nsecond\n")
    assert [i.request.text for i in load_unlabeled(tmp_path / "p.jsonl")] == ["a", "b"]
    assert load_unlabeled(tmp_path / "p.jsonl")[1].lang == "ko"
    assert [i.request.text for i in load_unlabeled(tmp_path / "p.txt", limit=1)] == ["first"]
    items = load_unlabeled(vqa_file(tmp_path / "vqa", lang="ko"))
    assert items[0].lang == "ko" and items[0].request.image.size == (56, 56)
    assert items[0].request.text.startswith("What colour is the image?\n")  # the evaluation's prompt


@pytest.mark.parametrize("arguments, message", [
    (["--adapt-data", "x.jsonl"], "--adapt-data needs --adapt"),
    (["--adapt", "adamerging"], "needs --adapt-data"),
    (["--adapt", "adamerging", "--adapt-data", "missing.jsonl"], "missing.jsonl: unlabeled input file not found"),
    (["--adapt", "adamms", "--adapt-data", "{data}", "--adapt-grid", "0.2,0.1,0.3"], "--adapt-grid needs"),
    (["--adapt", "adamms", "--adapt-data", "{data}", "--adapt-grid", "0.1,x"], "--adapt-grid: 'x'"),
    (["--adapt", "adamerging", "--adapt-data", "{data}", "--adapt-init", "1.5"], "--adapt-init must be in [0, 1]"),
    (["--adapt", "adamerging", "--adapt-data", "{data}", "--adapt-steps", "0"], "--adapt-steps must be"),
])
def test_bad_adapt_flags_are_one_line_errors(tiny_qwen2vl_pair, tmp_path, cli_error, arguments, message):
    target, source = tiny_qwen2vl_pair
    data = tmp_path / "d.txt"
    data.write_text("hello\n")
    arguments = [a.replace("{data}", str(data)) for a in arguments]
    from cmaam.merge import main

    error = cli_error(main, ["--source", str(source), "--target", str(target),
                                      "--output", str(tmp_path / "out"), *arguments])
    assert message in error
    assert not (tmp_path / "out").exists()
