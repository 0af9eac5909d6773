"""Helpers shared by the merging tests: YAML configs with model paths, CLI runs in fresh interpreters."""

from __future__ import annotations

import os
import string
import subprocess
import sys
from pathlib import Path

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
