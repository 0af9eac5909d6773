"""Fixtures of the output-safety tests: copies of the tiny model pair, an in-process CLI runner."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cmaam.core.cli import run_cli


@pytest.fixture
def place(tiny_llama_pair, tmp_path):
    """``place(relative, which)`` copies the tiny target ('T') or source ('S') to tmp_path/relative."""
    target, source = tiny_llama_pair

    def copy(relative: str, which: str = "T") -> Path:
        destination = tmp_path / relative
        shutil.copytree(target if which == "T" else source, destination)
        return destination

    return copy


@pytest.fixture
def call(capsys):
    """``call(main, argv)`` runs a CLI in-process through run_cli: (exit code, stdout, stderr)."""

    def run(main, argv: list) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exited:
            run_cli(main, [str(argument) for argument in argv])
        out, err = capsys.readouterr()
        return exited.value.code, out, err

    return run
