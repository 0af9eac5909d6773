"""cmaam.reproducible: run a module with the settings the pipeline applies before each step (threads,
deterministic kernels, seeds; ``cmaam.core.reproducible``)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch

REPOSITORY = Path(__file__).resolve().parents[2]
PROBE = '''
import json, os, random, sys
import numpy, torch
print(json.dumps({
    "name": __name__, "argv": sys.argv[1:],
    "threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads(),
    "deterministic": torch.are_deterministic_algorithms_enabled(),
    "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
    "cudnn_deterministic": torch.backends.cudnn.deterministic,
    "environment": {key: os.environ.get(key) for key in
                    ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG")},
    "random": random.random(), "numpy": float(numpy.random.rand()), "torch": torch.rand(1).item(),
}))
sys.exit(int(os.environ.get("PROBE_EXIT", "0")))
'''


def launch(tmp_path: Path, *arguments: str, exit_code: int = 0) -> subprocess.CompletedProcess:
    """Run ``python -m cmaam.reproducible ARGUMENTS`` with a probe module importable as ``probe``."""
    (tmp_path / "probe.py").write_text(PROBE)
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                  "CUBLAS_WORKSPACE_CONFIG")}
    environment.update(PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPOSITORY)]), PROBE_EXIT=str(exit_code))
    return subprocess.run([sys.executable, "-m", "cmaam.reproducible", *arguments], capture_output=True,
                          text=True, env=environment, cwd=tmp_path)


def test_the_step_runs_with_fixed_threads_deterministic_kernels_and_seeds(tmp_path):
    result = launch(tmp_path, "--threads", "3", "--seed", "7", "-m", "probe", "--flag", "value", "-m", "x")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["name"] == "__main__"
    assert seen["argv"] == ["--flag", "value", "-m", "x"]  # everything after the module is the module's
    assert seen["threads"] == 3 and seen["interop"] == 3  # neither is torch's default on this machine
    assert seen["deterministic"] and seen["warn_only"] and seen["cudnn_deterministic"]
    assert seen["environment"] == {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3",
                                   "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    # the first draws after seeding each generator with 7, computed here independently
    assert seen["random"] == random.Random(7).random()
    assert seen["numpy"] == numpy.random.RandomState(7).rand()
    assert seen["torch"] == torch.rand(1, generator=torch.Generator().manual_seed(7)).item()


def test_without_options_torch_keeps_its_defaults_except_determinism(tmp_path):
    defaults = launch(tmp_path, "--no-deterministic", "-m", "probe")
    seen = json.loads(defaults.stdout)
    assert not seen["deterministic"] and seen["environment"]["CUBLAS_WORKSPACE_CONFIG"] is None
    assert seen["environment"]["OMP_NUM_THREADS"] is None
    seeded = [json.loads(launch(tmp_path, "--seed", "1", "-m", "probe").stdout)["torch"] for _ in range(2)]
    assert seeded[0] == seeded[1] != seen["torch"]


def test_the_step_exit_code_is_passed_on(tmp_path):
    assert launch(tmp_path, "-m", "probe", exit_code=3).returncode == 3


@pytest.mark.parametrize("arguments, message", [
    ((), "required: -m"),
    (("-m",), "name the step to run"),
    (("-m", "no_such_package.step"), "no module named no_such_package.step"),
    (("--threads", "0", "-m", "probe"), "--threads must be at least 1"),
])
def test_bad_usage_is_one_line_error(tmp_path, arguments, message):
    result = launch(tmp_path, *arguments)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.strip().splitlines()[-1].startswith(
        ("error:", "python -m cmaam.reproducible: error:"))
    assert not result.stdout
