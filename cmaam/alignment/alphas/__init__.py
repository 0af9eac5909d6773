"""Adaptive merge coefficients: alpha_g = clip(base_alpha * A_g * (1 - v_g), alpha_min, alpha_max)."""

from cmaam.alignment.alphas.formula import DEFAULT_SCORE_WEIGHTS, alignment, alpha_value, parse_score_weights, preserve_mean
from cmaam.alignment.alphas.plan import AlphaConfig, AlphaPlan, GroupAlpha, compute_alphas, group_key
from cmaam.alignment.alphas.strategies import (
    STRATEGIES,
    STRATEGY_REGISTRY,
    Strategy,
    get_strategy,
    register_strategy,
)

__all__ = ["DEFAULT_SCORE_WEIGHTS", "STRATEGIES", "STRATEGY_REGISTRY", "AlphaConfig", "AlphaPlan", "GroupAlpha",
           "Strategy", "alignment", "alpha_value", "compute_alphas", "get_strategy", "group_key",
           "parse_score_weights", "preserve_mean", "register_strategy"]
