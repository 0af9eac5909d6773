"""scripts/gpu_check.sh without a GPU: one SKIP line per check, exit 0, nothing else on stdout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would run its checks")
def test_without_a_gpu_every_check_is_skipped():
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["SKIP merges on the GPU equal the CPU",
                                                      "SKIP CMA-ES in-memory merge on the GPU",
                                                      "SKIP bf16 LoRA steps on the GPU"]
    assert all("no CUDA GPU" in line for line in lines)
