"""Helpers of the output-safety tests: tree snapshots, a subprocess runner, the one-line error check."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from reliability.harness import tree_state

ROOT = Path(__file__).resolve().parents[2]


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: file -> sha256, folder -> 'dir', link -> 'link -> <target>' (the
    reliability harness's ``tree_state``, one checker of "nothing changed" for both suites)."""
    return tree_state(folder)


def python(*args, env: dict | None = None, cwd: Path = ROOT, timeout: float = 180, **options):
    """Run ``python ARGS`` from the repository root (CMAAM_DEBUG unset): a CompletedProcess."""
    environment = {key: value for key, value in os.environ.items() if key != "CMAAM_DEBUG"}
    environment.update(env or {})
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=environment, timeout=timeout, **options)


def assert_one_error_line(code: int, err: str, *fragments: str) -> None:
    """Exit code 2, stderr exactly one 'error: ...' line holding every fragment (besides progress bars),
    no traceback."""
    lines = [line for line in err.splitlines() if line.strip() and not re.search(r"\d+%\|", line)]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err
