"""Fixtures of the evolve tests: tiny model pairs and a tiny MGSM search config (models built once)."""

from __future__ import annotations

import copy

import pytest
import yaml

from cmaam.core.presets import preset_path


@pytest.fixture(scope="session")
def tiny_preset() -> dict:
    """The tiny evolve preset (cmaam/configs/evolve/tiny.yaml) as a mapping."""
    return yaml.safe_load(preset_path("evolve", "tiny").read_text())


@pytest.fixture(scope="session")
def tiny_search(tiny_preset, tmp_path_factory) -> dict:
    """The tiny preset made cheaper (2 MGSM questions, 4 new tokens); models built into one shared folder."""
    models = tmp_path_factory.mktemp("evolve_models")
    config = copy.deepcopy(tiny_preset)
    for entry in config["models"]:
        entry["path"] = str(models / entry["name"])  # absolute: every run folder reuses the same build
    config["fitness"].update(limit=2, max_new_tokens=4, batch_size=2)
    config.update(wandb_mode="disabled", progress=False, figure_every=0)
    return config

