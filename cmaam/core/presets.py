"""The YAML presets shipped inside the package (``cmaam/configs/<kind>/<name>.yaml``).

They are package data, found through importlib.resources, so a checkout, an editable install and a
wheel install all see the same files.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

KINDS = ("experiments", "evolve")


def preset_folder(kind: str) -> Path:
    """The folder holding the presets of one kind (``experiments`` or ``evolve``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown preset kind {kind!r} (choose {', '.join(KINDS)})")
    return Path(str(files("cmaam.configs").joinpath(kind)))


def preset_path(kind: str, name: str) -> Path:
    """The path of preset ``name`` of ``kind`` (it may not exist: callers report unknown names)."""
    return preset_folder(kind) / f"{name}.yaml"


def preset_names(kind: str) -> list[str]:
    """The preset names of one kind, sorted."""
    folder = preset_folder(kind)
    return sorted(path.stem for path in folder.glob("*.yaml")) if folder.is_dir() else []
