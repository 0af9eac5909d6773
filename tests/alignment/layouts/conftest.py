"""Fixtures for the layout tests: tiny Qwen2-VL, LLaVA and LLaVA-OneVision folders."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_vlms(tiny_qwen2vl, tmp_path_factory) -> dict[str, Path]:
    """Tiny Qwen2-VL, Qwen2.5-VL, LLaVA and LLaVA-OneVision model folders (saved by transformers 5)."""
    from cmaam.testing.tiny import build_tiny_vlm

    root = tmp_path_factory.mktemp("layout_models")
    return {
        "qwen2_vl": tiny_qwen2vl,
        "qwen2_5_vl": build_tiny_vlm(root / "qwen2_5_vl", "qwen2_5_vl", seed=0, with_processor=False),
        "llava": build_tiny_vlm(root / "llava", "llava", seed=0, with_processor=False),
        "llava_onevision": build_tiny_vlm(root / "llava_onevision", "llava_onevision", seed=0, with_processor=False),
    }
