"""Fixtures of the merging tests: families of tiny models (base + two seeded 'fine-tunes') per architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
from cmaam.testing.tiny import TinySize, build_tiny_causal_lm, perturb_model

# hidden 32, 4 layers: enough for gradients over layers and frankenmerges, small enough to build in ~1 s.
SIZE = TinySize(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2)


@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """``family(model_type)`` -> {"base", "ft1", "ft2"} model folders (built once per type)."""
    built: dict[str, dict[str, Path]] = {}

    def get(model_type: str) -> dict[str, Path]:
        if model_type not in built:
            folder = tmp_path_factory.mktemp(f"family_{model_type}")
            base = build_tiny_causal_lm(folder / "base", model_type, seed=0, size=SIZE)
            built[model_type] = {
                "base": base,
                "ft1": perturb_model(base, folder / "ft1", scale=0.1, seed=1),
                "ft2": perturb_model(base, folder / "ft2", scale=0.1, seed=2),
            }
        return built[model_type]

    return get

