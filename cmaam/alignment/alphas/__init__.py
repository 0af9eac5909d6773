"""Adaptive merge coefficients: alpha_g = clip(base_alpha * A_g * (1 - v_g), alpha_min, alpha_max).

The formula and the strategy registry import without torch (the experiment config and the layouts
CLI check strategy names before any model work); the alpha plan, built on the scores, loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from cmaam.alignment.alphas.formula import (
    DEFAULT_SCORE_WEIGHTS,
    alignment,
    alpha_value,
    parse_score_weights,
    preserve_mean,
)
from cmaam.alignment.alphas.strategies import (
    STRATEGIES,
    STRATEGY_REGISTRY,
    Strategy,
    get_strategy,
    register_strategy,
)

if TYPE_CHECKING:
    from cmaam.alignment.alphas.plan import AlphaConfig, AlphaPlan, GroupAlpha, compute_alphas, group_key

_PLAN = ("AlphaConfig", "AlphaPlan", "GroupAlpha", "compute_alphas", "group_key")

__all__ = ["DEFAULT_SCORE_WEIGHTS", "STRATEGIES", "STRATEGY_REGISTRY", "AlphaConfig", "AlphaPlan", "GroupAlpha",
           "Strategy", "alignment", "alpha_value", "compute_alphas", "get_strategy", "group_key",
           "parse_score_weights", "preserve_mean", "register_strategy"]


def __getattr__(name: str):
    if name in _PLAN:
        return getattr(importlib.import_module("cmaam.alignment.alphas.plan"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
