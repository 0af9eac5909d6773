"""End-to-end merges of the tiny Qwen2-VL pair: loadable models, reference equalities, determinism, reports."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from cmaam.alignment.alphas import AlphaConfig, parse_score_weights
from cmaam.core.options import ExecutionOptions
from cmaam.alignment.scores import cmbc, embedding_subspace, gfs, pda, relative_change
from cmaam.io import CheckpointReader
from cmaam.merging.executor import TensorJob, run_merge
from cmaam.alignment.merge import merge_vlm
from cmaam.merging.methods import get_method
from cmaam.merging.sweep import sweep
from cmaam.testing.reads import record_reads

STRATEGIES = ["basic", "component", "layerwise", "full"]

QUIET = ExecutionOptions(progress=False)


def weights(folder):
    return load_file(str(folder / "model.safetensors"))


def linear_merge(target, source, output, alpha):
    """A plain linear merge through the registry's ``linear`` method, for comparison."""
    readers = {"t": CheckpointReader(target), "s": CheckpointReader(source)}
    linear = get_method("linear")
    jobs = [TensorJob(n, [("t", n), ("s", n)], lambda ts: linear(ts, None, weight=[1 - alpha, alpha]))
            for n in readers["t"].keys()]
    return run_merge(readers, jobs, output, QUIET, reference=target)


def forward_on_image_and_text(folder):
    """Load the merged folder with transformers and run one forward pass on an image + text prompt."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from cmaam.io.processors import load_processor

    processor = load_processor(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "무엇이 보이나요?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[Image.new("RGB", (56, 56), (120, 30, 200))], text=[text], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and bool(torch.isfinite(logits).all())
    assert torch.equal(model.lm_head.weight.detach(), weights(folder)["lm_head.weight"])  # weights really loaded


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_gives_a_working_vlm(qwen_pair, tmp_path, strategy):
    target, source = qwen_pair
    interp = "slerp" if strategy == "full" else "linear"
    result = merge_vlm(source, target, tmp_path / "out", AlphaConfig(strategy, base_alpha=0.5), QUIET,
                       interp=interp)
    forward_on_image_and_text(tmp_path / "out")
    merged, t, s = weights(tmp_path / "out"), weights(target), weights(source)
    name = "model.layers.0.mlp.up_proj.weight"
    alpha = result.plan.alpha(name)
    assert 0 < alpha < 0.5
    if interp == "linear":
        assert torch.allclose(merged[name], (1 - alpha) * t[name] + alpha * s[name], atol=1e-7)
    else:
        expected = get_method("slerp")([s[name]], t[name], t=alpha)
        assert torch.allclose(merged[name], expected, atol=1e-7)
    assert (tmp_path / "out" / "alphas.yaml").is_file()
    assert any((tmp_path / "out" / name).is_file() for name in ("processor_config.json", "preprocessor_config.json"))


def test_base_alpha_zero_returns_the_target(qwen_pair, tmp_path):
    target, source = qwen_pair
    merge_vlm(source, target, tmp_path / "out", AlphaConfig("layerwise", base_alpha=0.0), QUIET)
    merged, t = weights(tmp_path / "out"), weights(target)
    assert merged.keys() == t.keys() and all(torch.equal(merged[n], t[n]) for n in t)


def test_basic_with_unit_alignment_and_no_variance_is_the_linear_merge(qwen_pair, tmp_path):
    target, source = qwen_pair
    config = AlphaConfig("basic", base_alpha=0.3, score_weights=parse_score_weights("pda=0,gfs=0,cmbc=0"),
                         use_sensitivity=False)
    result = merge_vlm(source, target, tmp_path / "out", config, QUIET)
    assert set(result.plan.tensor_alphas.values()) == {0.3}
    linear_merge(target, source, tmp_path / "linear", 0.3)
    merged, reference = weights(tmp_path / "out"), weights(tmp_path / "linear")
    assert all(torch.allclose(merged[n], reference[n], atol=1e-7, rtol=0) for n in reference)


def test_same_inputs_give_byte_identical_outputs(qwen_pair, tmp_path):
    target, source = qwen_pair
    for run in ("a", "b"):
        merge_vlm(source, target, tmp_path / run, AlphaConfig("full", preserve_mean=True), QUIET,
                  analyze=True, print_summary=False)
    for name in ("model.safetensors", "analysis/report.json", "alphas.yaml", "analysis/report.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_analyze_writes_reports_with_every_tensor(qwen_pair, tmp_path, capsys):
    from PIL import Image

    target, source = qwen_pair
    merge_vlm(source, target, tmp_path / "out", AlphaConfig("layerwise", base_alpha=0.5), QUIET,
              analyze=True)
    analysis = tmp_path / "out" / "analysis"
    report = json.loads((analysis / "report.json").read_text())
    names = CheckpointReader(target).keys()
    assert set(report["tensors"]) == set(names)
    bridge = report["tensors"]["visual.merger.mlp.2.weight"]
    assert bridge["component"] == "cross_modal_bridge"
    assert report["summary"]["cmbc_capture_term"] is True
    assert report["tensors"]["model.layers.0.mlp.up_proj.weight"]["cmbc"] is None
    assert "vision.0" in report["groups"] and "language.0" in report["groups"]
    # every reported score is the pure score function on the checkpoint's tensors (report rounds to 8 digits)
    source_reader, target_reader = CheckpointReader(source), CheckpointReader(target)
    embedding = target_reader.get(report["summary"]["input_embedding"], dtype=torch.float32)
    for name, tensor in report["tensors"].items():
        s, t = source_reader.get(name, dtype=torch.float32), target_reader.get(name, dtype=torch.float32)
        assert tensor["alpha"] == report["groups"][tensor["group"]]["alpha"]
        assert tensor["pda"] == pytest.approx(pda(s, t), rel=1e-7, abs=1e-12), name
        assert tensor["gfs"] == pytest.approx(gfs(s, t), rel=1e-7, abs=1e-12), name
        assert tensor["sensitivity"] == pytest.approx(relative_change(s, t), rel=1e-7, abs=1e-12), name
    s, t = (reader.get("visual.merger.mlp.2.weight", dtype=torch.float32) for reader in (source_reader, target_reader))
    assert bridge["cmbc"] == pytest.approx(cmbc(s, t, embedding_subspace(embedding)), rel=1e-7)
    for name in ("heatmap_alpha.png", "heatmap_scores.png"):
        with Image.open(analysis / name) as image:
            assert image.size[0] > 100 and image.size[1] > 100
    assert "## Groups (layerwise)" in (analysis / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "cross_modal_bridge" in printed and "mean alpha" in printed


def test_alphas_only_writes_the_analysis_without_weights(qwen_pair, tmp_path):
    target, source = qwen_pair
    result = merge_vlm(source, target, tmp_path / "alphas", AlphaConfig("component"), QUIET,
                       alphas_only=True)
    files = {p.name for p in (tmp_path / "alphas").iterdir()}
    assert {"report.json", "report.md", "alphas.yaml", "heatmap_alpha.png"} <= files
    assert not any(name.endswith(".safetensors") for name in files)
    import yaml

    document = yaml.safe_load((tmp_path / "alphas" / "alphas.yaml").read_text())
    assert document["groups"]["cross_modal_bridge"] == pytest.approx(result.plan.groups["cross_modal_bridge"].alpha)


def test_keys_in_one_model_only_are_kept_and_reported(qwen_pair, variants, tmp_path, caplog):
    target, _ = qwen_pair
    caplog.set_level(logging.INFO, logger="cmaam.alignment.merge")
    merge_vlm(variants["unmatched_source"], target, tmp_path / "out", AlphaConfig("component"), QUIET,
              analyze=True)
    report = json.loads((tmp_path / "out" / "analysis" / "report.json").read_text())
    missing = "model.layers.1.post_attention_layernorm.weight"
    assert report["only_in_target"] == [missing] and report["only_in_source"] == ["model.extra_adapter.weight"]
    merged, t = weights(tmp_path / "out"), weights(target)
    assert torch.equal(merged[missing], t[missing]) and "model.extra_adapter.weight" not in merged
    assert [record.getMessage() for record in caplog.records] == [
        "1 tensor(s) only in the target and 0 non-floating tensor(s) were kept from the target "
        "(listed in alphas.yaml and report.json)",
        "1 tensor(s) only in the source were skipped: model.extra_adapter.weight "
        "(listed in alphas.yaml and report.json)"]


def test_sweep_outputs_equal_separate_linear_merges(qwen_pair, tmp_path):
    target, source = qwen_pair
    outputs = sweep(source, target, tmp_path / "sweep", "0.3,0.7", QUIET)
    assert [p.name for p in outputs] == ["alpha_0.3", "alpha_0.7"]
    for alpha, output in zip((0.3, 0.7), outputs):
        reference = weights(linear_merge(target, source, tmp_path / f"linear_{alpha}", alpha))
        merged = weights(output)
        assert merged.keys() == reference.keys()
        assert all(torch.allclose(merged[n], reference[n], atol=1e-7, rtol=0) for n in reference)
        assert (output / "config.json").is_file() and (output / "tokenizer.json").is_file()


def test_sweep_reads_each_tensor_once(qwen_pair, tmp_path, monkeypatch):
    target, source = qwen_pair
    calls = record_reads(monkeypatch, lambda folder, name, *rows: (folder, name))
    sweep(source, target, tmp_path / "sweep", [0.2, 0.4, 0.6], QUIET)
    assert len(calls) == len(set(calls)) == 2 * len(CheckpointReader(target).keys())


def test_the_merge_command_prints_the_notes_on_stderr(qwen_pair, variants, tmp_path, capsys):
    """Through run_cli the notes read as before (``note: ...`` on stderr); the summary table stays on stdout."""
    from cmaam.core.cli import run_cli
    from cmaam.merge import main

    target, _ = qwen_pair
    with pytest.raises(SystemExit) as exited:
        run_cli(main, ["--source", str(variants["unmatched_source"]), "--target", str(target),
                       "--output", str(tmp_path / "out"), "--strategy", "component", "--no-progress"])
    out, err = capsys.readouterr()
    assert exited.value.code == 0
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert notes == ["note: 1 tensor(s) only in the target and 0 non-floating tensor(s) were kept from the target "
                     "(listed in alphas.yaml)",
                     "note: 1 tensor(s) only in the source were skipped: model.extra_adapter.weight "
                     "(listed in alphas.yaml)"]
    assert "| component" in out and "note:" not in out


def test_a_language_model_only_finetune_gets_one_alpha_whatever_the_grouping(tiny_qwen2vl, tmp_path):
    """Vision, bridge and embeddings untouched: basic, component and full give the language model the same
    alpha level, and the untouched groups (no-ops at any alpha) keep base_alpha and are marked unchanged."""
    from cmaam.alignment.scores.sensitivity import sensitivity_variance
    from cmaam.testing.tiny import perturb_model

    source = perturb_model(tiny_qwen2vl, tmp_path / "lm_only", 0.05, seed=1, only="model.layers.")
    plans = {strategy: merge_vlm(source, tiny_qwen2vl, tmp_path / strategy, AlphaConfig(strategy, base_alpha=0.5),
                                 QUIET, alphas_only=True, print_summary=False)
             for strategy in ("basic", "component", "full")}
    basic, component, full = (plans[s].plan for s in ("basic", "component", "full"))
    tensors = plans["basic"].analysis.tensors
    changed = [t for t in tensors.values() if t.changed]
    assert changed and all(t.component == "language_model" for t in changed)
    assert not any(t.changed for t in tensors.values() if t.component != "language_model")
    assert basic.groups["model"].variance == pytest.approx(
        sensitivity_variance([t.sensitivity for t in changed], [t.numel for t in changed]), rel=1e-12)
    assert basic.groups["model"].alpha == component.groups["language_model"].alpha  # same tensors, same scores
    language = [g.alpha for k, g in full.groups.items() if k.startswith("language_model.")]
    assert max(abs(a - basic.groups["model"].alpha) for a in language) < 0.01
    assert full.mean_alpha == pytest.approx(basic.mean_alpha, abs=0.01)
    for key, group in full.groups.items():
        if not key.startswith("language_model."):
            assert not group.scores.changed and group.alpha == 0.5
    report = json.loads((tmp_path / "full" / "report.json").read_text())
    assert report["groups"]["vision_encoder.0"]["changed"] is False
    assert report["tensors"]["visual.blocks.0.attn.qkv.weight"]["changed"] is False
