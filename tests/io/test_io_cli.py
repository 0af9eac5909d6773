"""Command-line edges: file modes, tiny's size checks, Ctrl-C during start-up, partial experiment runs,
third-party load errors as one line."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cmaam import tiny
from cmaam.testing.tiny import perturb_model
from cmaam.io.atomic import atomic_write_json, atomic_write_text
from cmaam.core.errors import CMAAMError, load_errors
from io_helpers import ROOT, assert_one_error_line


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_files_get_the_umask_mode(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        text = atomic_write_text(tmp_path / "a.txt", "x")
        data = atomic_write_json(tmp_path / "sub" / "b.json", {"x": 1})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(text.stat().st_mode) == mode
    assert stat.S_IMODE(data.stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "b.json", "sub"]


@pytest.mark.parametrize("arguments, message", [
    (["--num-hidden-layers", "-1"], "num_hidden_layers must be a positive integer, got -1"),
    (["--hidden-size", "0"], "hidden_size must be a positive integer, got 0"),
    (["--num-attention-heads", "0"], "num_attention_heads must be a positive integer, got 0"),
    (["--hidden-size", "66", "--num-attention-heads", "4"], "hidden_size 66 is not divisible by num_attention_heads 4"),
    (["--num-key-value-heads", "3"], "num_attention_heads 4 is not divisible by num_key_value_heads 3"),
    (["--hidden-size", "60", "--num-attention-heads", "4"], "head size hidden_size / num_attention_heads = 15"),
    (["--vision-hidden-size", "30"], "vision_hidden_size 30 is not divisible by vision_heads 4"),
    (["--vision-layers", "0"], "vision_layers must be a positive integer, got 0"),
])
def test_tiny_rejects_bad_sizes_in_one_line(call, tmp_path, arguments, message):
    code, _, err = call(tiny.main, ["--output", tmp_path / "model", *arguments])
    assert_one_error_line(code, err, message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("module", ["cmaam.merge", "finetune.lora_vqa"])
def test_ctrl_c_during_start_up_imports_is_one_line(module, tmp_path):
    """SIGINT while torch is being imported (before run_cli): 'error: interrupted', exit 130."""
    environment = {key: value for key, value in os.environ.items() if key != "CMAAM_DEBUG"}
    process = subprocess.Popen([sys.executable, "-m", module, "--help"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=environment)
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:  # torch's library mapped: mid-import
        with_torch = maps.exists() and "libtorch" in maps.read_text(errors="replace")
        if with_torch:
            break
        time.sleep(0.005)
    assert process.poll() is None, "the command ended before torch was imported"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert (process.returncode, stderr) == (130, "error: interrupted\n")


def test_experiment_without_the_compare_step_ends_cleanly(call, tmp_path):
    from cmaam.experiment import main

    code, out, err = call(main, ["demo", "--steps", "prepare", "--set", f"output_dir={tmp_path / 'exp'}",
                                 "--set", "data.synthetic_samples=10", "--set", "data.image_size=28"])
    assert code == 0, err
    assert "Traceback" not in err and "comparison" not in out
    assert (tmp_path / "exp" / "data" / "synthetic_ko" / "test.jsonl").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # the experiment's lock is gone


def test_load_errors_gives_one_line_and_keeps_the_cause():
    with pytest.raises(CMAAMError) as raised:
        with load_errors("models/x", "tokenizer"):
            raise ValueError("bad vocabulary\nsecond line")
    assert str(raised.value) == "models/x: cannot load the tokenizer (bad vocabulary)"
    assert isinstance(raised.value.__cause__, ValueError)  # CMAAM_DEBUG=1 shows it
    original = CMAAMError("already one line")
    with pytest.raises(CMAAMError) as raised:
        with load_errors("models/x"):
            raise original
    assert raised.value is original
    with pytest.raises(KeyboardInterrupt):
        with load_errors("models/x"):
            raise KeyboardInterrupt


@pytest.fixture
def corrupt_vlm(tiny_qwen2vl, tmp_path):
    """A copy of the tiny Qwen2-VL whose model.safetensors is cut in half."""
    folder = Path(shutil.copytree(tiny_qwen2vl, tmp_path / "vlm"))
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return folder


def test_corrupt_weights_in_the_fine_tuner_are_one_line(corrupt_vlm):
    from finetune.lora_vqa import LoraTrainConfig, load_model

    with pytest.raises(CMAAMError, match=rf"^{re.escape(str(corrupt_vlm))}: cannot load the model \(.*header"):
        load_model(LoraTrainConfig(model=str(corrupt_vlm), data="unused", output="unused"), bf16=False)


def test_corrupt_inputs_of_perturb_and_evolve_are_one_line(corrupt_vlm, tmp_path):
    from cmaam.search.inmemory import build_empty_model

    with pytest.raises(CMAAMError, match="unreadable safetensors file"):
        perturb_model(corrupt_vlm, tmp_path / "perturbed")
    assert not (tmp_path / "perturbed").exists()
    (corrupt_vlm / "config.json").write_text('{"model_type": ')
    with pytest.raises(CMAAMError, match=rf"^{re.escape(str(corrupt_vlm))}: cannot load the model config"):
        build_empty_model(corrupt_vlm, "cpu", None)
