"""Bad input to ``python -m cmaam.mergekit``: one ``error:`` line, no traceback, no output folder, no leftovers."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from cmaam.io import CheckpointReader, write_state_dict
from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.merging.config_merge import merge_from_config
from merging_helpers import ROOT, run_cli_many, write_yaml
from reliability.harness import environment, write_sitecustomize

LINEAR = """
merge_method: linear
models:
  - model: $base
    parameters: {weight: 0.5}
  - model: $other
    parameters: {weight: 0.5}
"""


@pytest.fixture(scope="module")
def models(family, tmp_path_factory):
    """The llama family plus broken variants of its base model."""
    folder = tmp_path_factory.mktemp("broken")
    good = family("llama")
    reader = CheckpointReader(good["base"])
    tensors = {name: reader.get(name) for name in reader.keys()}
    no_weights = folder / "no_weights"
    no_weights.mkdir()
    shutil.copy(good["base"] / "config.json", no_weights / "config.json")
    reshaped = dict(tensors, **{"model.layers.0.mlp.up_proj.weight": torch.zeros(96, 32)})
    missing = {k: v for k, v in tensors.items() if k != "model.layers.1.self_attn.v_proj.weight"}
    nan = dict(tensors)
    nan["model.layers.0.self_attn.q_proj.weight"] = tensors["model.layers.0.self_attn.q_proj.weight"].clone()
    nan["model.layers.0.self_attn.q_proj.weight"][3, 5] = float("nan")
    pickled = folder / "pickled"
    pickled.mkdir()
    shutil.copy(good["base"] / "config.json", pickled / "config.json")
    torch.save(tensors, pickled / "pytorch_model.bin")
    return dict(
        good,
        missing_path=folder / "does_not_exist",
        no_weights=no_weights,
        reshaped=write_state_dict(folder / "reshaped", reshaped, reference=good["base"]),
        missing_tensor=write_state_dict(folder / "missing_tensor", missing, reference=good["base"]),
        nan=write_state_dict(folder / "nan", nan, reference=good["base"]),
        pickled=pickled,
    )

QUIET = ExecutionOptions(device="cpu", progress=False)


def assert_one_line_error(result: subprocess.CompletedProcess, output, expected: str, code: int = 2) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0], lines[0]
    assert not output.exists()
    assert not list(output.parent.glob(f".{output.name}.*")), "temporary folder left behind"


CASES = {
    "missing model path": (LINEAR, "missing_path", "no such model folder"),
    "folder without weights": (LINEAR, "no_weights", "no weights found"),
    "mismatched shapes": (LINEAR, "reshaped", "shape mismatch"),
    "missing tensor": (LINEAR, "missing_tensor", "missing tensor 'model.layers.1.self_attn.v_proj.weight'"),
    "unknown method": (LINEAR.replace("linear", "frobnicate"), "ft1", "unknown merge method 'frobnicate'"),
    "density 1.5": ("merge_method: ties\nbase_model: $base\nmodels:\n  - model: $other\n"
                    "    parameters: {weight: 1.0, density: 1.5}\n", "ft1", "density=1.5 is above 1.0"),
    "t -0.2": ("merge_method: slerp\nbase_model: $base\nmodels:\n  - model: $base\n  - model: $other\n"
               "parameters: {t: -0.2}\n", "ft1", "t=-0.2 is below 0.0"),
    "nan input": (LINEAR, "nan", "contains NaN or Inf"),
    "pickle without --allow-pickle": (LINEAR, "pickled", "--allow-pickle"),
    "unknown key": (LINEAR + "tokenizer_sauce: base\n", "ft1", "unknown key 'tokenizer_sauce'"),
    "unknown parameter": (LINEAR.replace("{weight: 0.5}\n  - model: $other", "{wieght: 0.5}\n  - model: $other"),
                          "ft1", "unknown parameter 'wieght'"),
    "union tokenizer": (LINEAR + "tokenizer_source: union\n", "ft1", "tokenizer_source: 'union' is not supported"),
    "invalid yaml": ("merge_method: [linear\n", "ft1", "invalid YAML"),
    "existing output": (LINEAR, "ft1", "already exists"),
}


@pytest.fixture(scope="module")
def error_runs(models, tmp_path_factory):
    """Every bad-input case run through the CLI at once (concurrently): case -> (result, output folder)."""
    folder = tmp_path_factory.mktemp("errors")
    commands, outputs = [], {}
    for number, (case, (text, other, _)) in enumerate(CASES.items()):
        config = write_yaml(folder, text, dict(models, other=models[other]), f"case{number}.yaml")
        outputs[case] = folder / f"out{number}"
        if case == "existing output":
            outputs[case].mkdir()
            (outputs[case] / "keep.txt").write_text("mine")
        commands.append(("cmaam.mergekit", config, outputs[case], "--no-progress"))
    return {case: (result, outputs[case]) for case, result in zip(CASES, run_cli_many(commands))}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line(case, error_runs):
    result, output = error_runs[case]
    if case == "existing output":
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and "already exists" in lines[0], result.stderr
        assert (output / "keep.txt").read_text() == "mine"  # untouched
        return
    assert_one_line_error(result, output, CASES[case][2])


def test_nonfinite_pickle_and_overwrite_on_request(models, tmp_path):
    """The same inputs succeed with --allow-nonfinite, --allow-pickle and --overwrite (library calls)."""
    config = write_yaml(tmp_path, LINEAR, dict(models, other=models["nan"]))
    with pytest.raises(CMAAMError, match="NaN"):
        merge_from_config(config, tmp_path / "nan_out", QUIET)
    merge_from_config(config, tmp_path / "nan_out",
                      ExecutionOptions(device="cpu", progress=False, allow_nonfinite=True))
    merged = CheckpointReader(tmp_path / "nan_out").get("model.layers.0.self_attn.q_proj.weight")
    assert torch.isnan(merged[3, 5]) and torch.isfinite(merged).sum() == merged.numel() - 1

    pickled = write_yaml(tmp_path, LINEAR, dict(models, base=models["pickled"], other=models["ft1"]), "pickled.yaml")
    plain = write_yaml(tmp_path, LINEAR, dict(models, other=models["ft1"]), "plain.yaml")
    merge_from_config(pickled, tmp_path / "from_pickle",
                      ExecutionOptions(device="cpu", progress=False, allow_pickle=True))
    merge_from_config(plain, tmp_path / "from_safetensors", QUIET)
    a, b = CheckpointReader(tmp_path / "from_pickle"), CheckpointReader(tmp_path / "from_safetensors")
    assert sorted(a.keys()) == sorted(b.keys())
    assert all(torch.equal(a.get(name), b.get(name)) for name in b.keys())

    output = tmp_path / "existing"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    merge_from_config(plain, output, ExecutionOptions(device="cpu", progress=False, overwrite=True))
    assert not (output / "keep.txt").exists()
    assert json.loads((output / "config.json").read_text())["model_type"] == "llama"


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_during_writing_leaves_nothing(signal_number, models, tmp_path):
    """Kill the merge while the temporary folder is being filled: no final folder, temporary folder removed."""
    config = write_yaml(tmp_path, LINEAR, dict(models, other=models["ft1"]))
    output = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "cmaam.mergekit", str(config), str(output), "--no-progress"], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=environment(slow=0.05, sitecustomize=write_sitecustomize(tmp_path / "hooks")),  # slow tensor writes
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.partial-*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    partial = list(tmp_path.glob(".out.partial-*"))
    assert partial, "the merge never started writing"
    time.sleep(0.3)  # a few tensors into the ~2 s write
    assert any(partial[0].glob("*.safetensors")) and process.poll() is None
    process.send_signal(signal_number)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().startswith("error: interrupted")
    assert not output.exists()
    assert not list(tmp_path.glob(".out.*"))
