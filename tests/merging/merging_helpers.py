"""Helpers shared by the merging tests: YAML configs with model paths, CLI runs in fresh interpreters."""

from __future__ import annotations

import os
import string
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[2]


def write_yaml(folder: Path, text: str, models: dict[str, Path], name: str = "config.yaml") -> Path:
    """Write a YAML config, replacing ``$base``/``$ft1``/... with model paths."""
    path = folder / name
    path.write_text(string.Template(text).substitute({key: str(value) for key, value in models.items()}),
                    encoding="utf-8")
    return path


def run_cli_module(module: str, *args: str, env: dict | None = None,
                   timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` in a fresh interpreter from the repository root."""
    environment = {key: value for key, value in os.environ.items() if key != "CMAAM_DEBUG"}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=environment, timeout=timeout)


def run_cli_many(commands: list[tuple[str, ...]], parallel: int = 3, timeout: float = 300
                 ) -> list[subprocess.CompletedProcess]:
    """Run ``python -m ...`` commands, ``parallel`` at a time (interpreter start-up dominates their cost)."""
    environment = {key: value for key, value in os.environ.items() if key != "CMAAM_DEBUG"}
    results: list[subprocess.CompletedProcess | None] = [None] * len(commands)
    running: list[tuple[int, subprocess.Popen]] = []
    pending = list(enumerate(commands))
    while pending or running:
        while pending and len(running) < parallel:
            index, command = pending.pop(0)
            running.append((index, subprocess.Popen([sys.executable, "-m", *map(str, command)], cwd=ROOT,
                                                    env=environment, stdout=subprocess.PIPE,
                                                    stderr=subprocess.PIPE, text=True)))
        index, process = running.pop(0)
        stdout, stderr = process.communicate(timeout=timeout)
        results[index] = subprocess.CompletedProcess(commands[index], process.returncode, stdout, stderr)
    return results


def random_models(shape: tuple[int, ...], count: int, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(base, models): a seeded random float32 base and ``count`` models 0.1 away from it."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=generator)
    return base, [base + 0.1 * torch.randn(shape, generator=generator) for _ in range(count)]


def run_mergekit(config_path: Path, output: Path) -> None:
    """mergekit's own ``run_merge`` on a YAML file (CPU, no model card)."""
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate(yaml.safe_load(config_path.read_text()))
    run_merge(config, str(output), MergeOptions(quiet=True, write_model_card=False))


def max_differences(ours: Path, theirs: Path) -> dict[str, float]:
    """Max abs difference per tensor of two model folders holding the same tensor names and dtypes."""
    from cmaam.io import CheckpointReader

    a, b = CheckpointReader(ours), CheckpointReader(theirs)
    assert sorted(a.keys()) == sorted(b.keys())
    differences = {}
    for name in a.keys():
        assert a.dtype(name) == b.dtype(name), name
        differences[name] = (a.get(name).double() - b.get(name).double()).abs().max().item()
    return differences
