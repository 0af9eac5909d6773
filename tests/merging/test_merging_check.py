"""python -m cmaam.check: compatible families pass; architecture, key, shape and vocab differences are reported."""

from __future__ import annotations

import json

import torch

from cmaam.merging.compatibility import check_compatibility
from cmaam.io import CheckpointReader, write_state_dict
from merging_helpers import run_cli_many


def variant(tmp_path, base, name, change_tensors=None, change_config=None):
    """A copy of ``base`` with edited tensors and config."""
    reader = CheckpointReader(base)
    state = {key: reader.get(key) for key in reader.keys()}
    config = dict(reader.config)
    if change_tensors:
        change_tensors(state)
    if change_config:
        change_config(config)
    return write_state_dict(tmp_path / name, state, config=config)


def grow_vocab(state):
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        state[key] = torch.cat([state[key], torch.zeros(6, state[key].shape[1])])


def test_compatible_family(family):
    models = family("llama")
    report = check_compatibility([models["base"], models["ft1"], models["ft2"]])
    assert report.compatible and report.differences == []
    assert report.tensor_count[0] == len(CheckpointReader(models["base"]))


def test_differences_are_reported(family, tmp_path):
    base = family("llama")["base"]
    bigger_vocab = variant(tmp_path, base, "vocab", grow_vocab, lambda c: c.update(vocab_size=c["vocab_size"] + 6))
    missing = variant(tmp_path, base, "missing", lambda s: s.pop("model.layers.1.mlp.up_proj.weight"),
                      lambda c: c.update(rms_norm_eps=1e-5))
    report = check_compatibility([base, bigger_vocab, missing])
    assert not report.compatible
    rows = {(d.kind, d.name): d.values for d in report.differences}
    vocab = CheckpointReader(base).config["vocab_size"]
    assert rows[("vocab_size", "vocab_size")] == [str(vocab), str(vocab + 6), str(vocab)]
    assert rows[("shape", "model.embed_tokens.weight")] == [f"{vocab}x32", f"{vocab + 6}x32", f"{vocab}x32"]
    assert rows[("missing_tensor", "model.layers.1.mlp.up_proj.weight")] == ["present", "present", "MISSING"]
    assert rows[("config", "rms_norm_eps")] == ["1e-06", "1e-06", "1e-05"]
    assert not [d for d in report.differences if d.kind == "config" and d.blocking]
    table = report.table()
    assert "missing_tensor" in table and "config (info)" in table and f"{vocab + 6}x32" in table
    only_config = check_compatibility([base, variant(tmp_path, base, "eps", None,
                                                     lambda c: c.update(rms_norm_eps=1e-5))])
    assert only_config.compatible and len(only_config.differences) == 1


def test_cli_exit_codes(family, tmp_path):
    llama = family("llama")
    mistral = family("mistral")["base"]
    compatible, different, error = run_cli_many([
        ("cmaam.check", llama["base"], llama["ft1"]),
        ("cmaam.check", llama["base"], mistral),
        ("cmaam.check", llama["base"], tmp_path / "missing"),
    ])
    assert compatible.returncode == 0 and "compatible" in compatible.stdout, compatible.stderr
    assert different.returncode == 1 and "NOT compatible" in different.stdout
    assert "model_type" in different.stdout and "mistral" in different.stdout
    assert "LlamaForCausalLM" in different.stdout and "MistralForCausalLM" in different.stdout
    assert error.returncode == 2 and error.stderr.strip().startswith("error:") and "Traceback" not in error.stderr
    saved = json.loads((llama["base"] / "config.json").read_text())
    assert saved["model_type"] == "llama"  # reading never touches the inputs
