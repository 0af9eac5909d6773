"""What an install gets: console commands beside ``python -m``, and the presets as package data."""

from __future__ import annotations

import ast
import fnmatch
import importlib
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import yaml

import cmaam
from cmaam.core.presets import preset_folder, preset_names, preset_path

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SCRIPTS = PYPROJECT["project"]["scripts"]


def _runs_as_command(path: Path) -> bool:
    """A module with ``def main`` and an ``if __name__ == "__main__"`` block."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    has_main = any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)
    has_guard = any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)
    return has_main and has_guard


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_every_command_module_has_a_console_command():
    candidates = [*(ROOT / "cmaam").glob("*.py"), *(ROOT / "eval").glob("*/__main__.py"),
                  *(ROOT / "finetune").glob("*.py")]
    commands = {_module_name(path) for path in candidates if _runs_as_command(path)}
    assert {"cmaam.merge", "eval.mgsm.__main__", "finetune.lora_vqa"} <= commands  # the scan finds commands
    wrapped = [EntryPoint(name=name, value=value, group="console_scripts").load().module
               for name, value in SCRIPTS.items()]
    assert sorted(wrapped) == sorted(commands)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_entry_point_resolves_to_a_command(name):
    entry = EntryPoint(name=name, value=SCRIPTS[name], group="console_scripts").load()
    assert callable(entry) and name.startswith("cmaam-")
    assert callable(importlib.import_module(entry.module).main)


def test_console_command_runs_main_through_run_cli(monkeypatch, capsys):
    """``cmaam-layouts --help`` prints the same usage as ``python -m cmaam.layouts --help`` and exits 0."""
    from cmaam import console

    monkeypatch.setattr(sys, "argv", ["cmaam-layouts", "--help"])
    with pytest.raises(SystemExit) as exited:
        console.layouts()
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m cmaam.layouts")


def test_console_command_reports_user_errors_in_one_line(monkeypatch, capsys, tmp_path):
    from cmaam import console

    monkeypatch.setattr(sys, "argv", ["cmaam-layouts", str(tmp_path / "missing")])
    with pytest.raises(SystemExit) as exited:
        console.layouts()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv0, expected", [
    ("/venv/bin/cmaam-merge", True), ("-m", True), ("/usr/bin/ipython", False), ("", False)])
def test_console_commands_get_the_start_up_interrupt_handler(monkeypatch, argv0, expected):
    monkeypatch.setattr(sys, "argv", [argv0])
    assert cmaam._started_as_command() is expected


def test_presets_are_package_data():
    """Every preset file lies inside the cmaam package and matches a package-data pattern (a wheel ships it)."""
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["cmaam.configs"]
    files = sorted(path for kind in ("experiments", "evolve") for path in preset_folder(kind).glob("*"))
    assert files and all(path.is_relative_to(Path(cmaam.__file__).parent / "configs") for path in files)
    for path in files:
        relative = path.relative_to(Path(cmaam.__file__).parent / "configs").as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), relative


def test_preset_lookup():
    assert preset_names("experiments") == ["demo", "full", "quick", "tiny"]
    assert {"tiny", "ko_mistral_wizardmath", "ja_mistral_wizardmath"} <= set(preset_names("evolve"))
    assert preset_path("evolve", "tiny") == preset_folder("evolve") / "tiny.yaml"
    assert yaml.safe_load(preset_path("evolve", "tiny").read_text())["name"] == "tiny"
    assert not preset_path("experiments", "nope").exists()
    with pytest.raises(ValueError, match="unknown preset kind"):
        preset_folder("recipes")
