"""Bad input to ``python -m cmaam.merge`` / ``cmaam.merging.sweep``: one ``error:`` line, exit 2, no output folder.

A few cases run as real subprocesses; the rest go through the same ``run_cli`` entry point in-process
(interpreter start-up costs several seconds each on a loaded CI machine).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from cmaam.core.cli import run_cli


def run(module, *args):
    environment = dict(os.environ, CMAAM_DEBUG="")
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          env=environment, timeout=120)


def run_in_process(capsys, module, *args):
    """Call the module's ``run_cli(main, argv)``; return what a subprocess would (returncode, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(importlib.import_module(module).main, [str(arg) for arg in args])
    return SimpleNamespace(returncode=exit_info.value.code, stderr=capsys.readouterr().err)


def assert_one_line_error(result, output, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert not output.exists()
    assert not [p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}")]  # no temp folder left


CASES = {
    "architectures": lambda p, v, llama: (p[1], llama, [], "both must have one architecture"),
    "shapes": lambda p, v, llama: (v["reshaped"], p[0], [], "shapes differ"),
    "model_type": lambda p, v, llama: (p[1], p[0], ["--model-type", "gpt17"], "gpt17"),
    "unclassified": lambda p, v, llama: (v["unclassified_source"], v["unclassified"], [], "model.mystery.weight"),
    "base_alpha": lambda p, v, llama: (p[1], p[0], ["--base-alpha", "1.5"], "--base-alpha must be in [0, 1]"),
    "no_bridge": lambda p, v, llama: (v["no_bridge_source"], v["no_bridge_target"], [], "no cross-modal bridge"),
    "nonfinite": lambda p, v, llama: (v["nan_source"], p[0], [], "model.layers.0.mlp.up_proj.weight: contains NaN"),
    "score_weights": lambda p, v, llama: (p[1], p[0], ["--score-weights", "pda=oops"], "pda=oops"),
}


SUBPROCESS_CASES = ("no_bridge", "unclassified")


@pytest.mark.parametrize("case", sorted(CASES))
def test_merge_bad_input(case, qwen_pair, variants, tiny_llama, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CMAAM_DEBUG", raising=False)
    source, target, extra, fragment = CASES[case](qwen_pair, variants, tiny_llama)
    output = tmp_path / "merged"
    runner = run if case in SUBPROCESS_CASES else lambda *args: run_in_process(capsys, *args)
    result = runner("cmaam.merge", "--source", source, "--target", target, "--output", output, "--no-progress",
                 "--analyze", *extra)
    assert_one_line_error(result, output, fragment)


def test_sweep_bad_alpha_and_shapes(qwen_pair, variants, tmp_path, capsys):
    target, source = qwen_pair
    result = run_in_process(capsys, "cmaam.sweep", "--source", source, "--target", target, "--alphas", "0.3,1.2",
                 "--output-dir", tmp_path / "sweep")
    assert_one_line_error(result, tmp_path / "sweep", "outside [0, 1]")
    result = run_in_process(capsys, "cmaam.sweep", "--source", variants["reshaped"], "--target", target,
                            "--alphas", "0.3",
                 "--output-dir", tmp_path / "sweep")
    assert_one_line_error(result, tmp_path / "sweep", "shapes differ")


def test_existing_output_is_refused_before_any_work(qwen_pair, tmp_path, capsys):
    target, source = qwen_pair
    output = tmp_path / "exists"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    result = run_in_process(capsys, "cmaam.merge", "--source", source, "--target", target, "--output", output)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert [p.name for p in output.iterdir()] == ["keep.txt"]
