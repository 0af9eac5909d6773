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


@pytest.fixture(scope="session")
def tiny_dfs_search(tmp_path_factory) -> dict:
    """configs/evolve/tiny_dfs.yaml made cheaper (2 MGSM questions, 4 new tokens, 3 x 4 candidates); models shared."""
    config = yaml.safe_load(preset_path("evolve", "tiny_dfs").read_text())
    models = tmp_path_factory.mktemp("dfs_models")
    for entry in config["models"]:
        entry["path"] = str(models / entry["name"])
    config["fitness"].update(limit=2, max_new_tokens=4, batch_size=2)
    config.update(generations=3, population=4, wandb_mode="disabled", progress=False, figure_every=0)
    return config


@pytest.fixture(scope="session")
def tiny_vlm_world(tiny_qwen2vl_pair, tmp_path_factory) -> dict:
    """A tiny Qwen2-VL pair (random target, perturbed source) and small synthetic Korean and English VQA sets."""
    from finetune.synthetic_vqa import SyntheticConfig, generate

    root = tmp_path_factory.mktemp("vlm_world")
    data = {lang: generate(SyntheticConfig(output=str(root / lang), n=60, lang=lang, seed=0, image_size=56),
                           progress=False) for lang in ("ko", "en")}
    target, source = tiny_qwen2vl_pair
    return {"target": str(target), "source": str(source), "ko": str(data["ko"]), "en": str(data["en"])}


@pytest.fixture(scope="session")
def tiny_vlm_search(tiny_vlm_world) -> dict:
    """configs/evolve/tiny_vlm.yaml pointed at the tiny world: 4 Korean + 4 English val items, 3 x 4 candidates."""
    config = yaml.safe_load(preset_path("evolve", "tiny_vlm").read_text())
    config["models"] = [{"name": "base", "path": tiny_vlm_world["target"]},
                        {"name": "korean", "path": tiny_vlm_world["source"]}]
    config["fitness"].update(source=tiny_vlm_world["ko"], retention=tiny_vlm_world["en"], limit=4, retention_limit=4,
                             max_new_tokens=4, batch_size=8)
    config.update(generations=3, population=4, wandb_mode="disabled", progress=False, figure_every=0)
    return config
