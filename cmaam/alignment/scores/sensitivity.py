"""Sensitivity: per-tensor relative change r of the task vector and the group's variance term v_g."""

from __future__ import annotations

import math
from typing import Sequence

import torch


def relative_change(source: torch.Tensor, target: torch.Tensor) -> float:
    """r = ||S - T||_F / max(||T||_F, ||S||_F), in [0, 2]; 0 when both are zero.

    The first brief wrote ||T|| + eps (docs/design.md); a target that is all zeros (freshly initialised biases) then
    gives r ~ 1e8 and swamps its group's variance. With max(||T||, ||S||) r equals the written
    form to first order for fine-tunes (||S|| ~ ||T||) and stays bounded.
    """
    source = source.float()
    target = target.float()
    norm_t = float(torch.linalg.vector_norm(target))
    norm_s = float(torch.linalg.vector_norm(source))
    if max(norm_t, norm_s) == 0.0:
        return 0.0
    return relative_change_from(norm_s, norm_t, float(torch.dist(source, target)))


def relative_change_from(norm_source: float, norm_target: float, distance: float) -> float:
    """r = distance / max(||T||, ||S||) from the norms (0 when both are zero)."""
    scale = max(norm_target, norm_source)
    return 0.0 if scale == 0.0 else distance / scale


def weighted_mean_and_cv(values: Sequence[float], weights: Sequence[float]) -> tuple[float, float]:
    """Weighted mean and coefficient of variation (population std / mean); cv = 0 when the mean is 0."""
    total = float(sum(weights))
    if total <= 0 or not values:
        return 0.0, 0.0
    mean = sum(w * v for v, w in zip(values, weights)) / total
    variance = sum(w * (v - mean) ** 2 for v, w in zip(values, weights)) / total
    if mean <= 0:
        return mean, 0.0
    return mean, math.sqrt(max(variance, 0.0)) / mean


def variance_term(cv: float) -> float:
    """cv^2 / (1 + cv^2): maps a coefficient of variation to [0, 1)."""
    return cv * cv / (1.0 + cv * cv)


def sensitivity_variance(values: Sequence[float], weights: Sequence[float]) -> float:
    """v_g = cv^2 / (1 + cv^2) of the element-weighted r values of one group, in [0, 1)."""
    return variance_term(weighted_mean_and_cv(values, weights)[1])
