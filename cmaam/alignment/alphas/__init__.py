"""Adaptive merge coefficients: alpha_g = clip(base_alpha * A_g * (1 - v_g), alpha_min, alpha_max)."""

from cmaam.alignment.alphas.formula import (DEFAULT_SCORE_WEIGHTS, alignment, alpha_value, parse_score_weights,
                                            preserve_mean)
from cmaam.alignment.alphas.strategies import STRATEGIES, AlphaConfig, AlphaPlan, GroupAlpha, compute_alphas, group_key

__all__ = ["DEFAULT_SCORE_WEIGHTS", "STRATEGIES", "AlphaConfig", "AlphaPlan", "GroupAlpha", "alignment",
           "alpha_value", "compute_alphas", "group_key", "parse_score_weights", "preserve_mean"]
