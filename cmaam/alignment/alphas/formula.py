"""The alpha formula, the alignment mix of scores, and the mean-preserving rescale."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from cmaam.core.errors import CMAAMError

DEFAULT_SCORE_WEIGHTS = {"pda": 0.4, "gfs": 0.3, "cmbc": 0.3}


def parse_score_weights(text: str | Mapping[str, float] | None) -> dict[str, float]:
    """'pda=0.4,gfs=0.3,cmbc=0.3' (or a mapping) -> weights; names not given keep their defaults."""
    weights = dict(DEFAULT_SCORE_WEIGHTS)
    if text is None:
        return weights
    items = text.items() if isinstance(text, Mapping) else (
        part.split("=", 1) if "=" in part else (part, None) for part in str(text).split(",") if part.strip())
    for name, value in items:
        name = str(name).strip().lower()
        if name not in weights:
            raise CMAAMError(f"unknown score {name!r} in score weights (known: {', '.join(DEFAULT_SCORE_WEIGHTS)})")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise CMAAMError(f"score weight {name}={value} is not a number "
                             "(write e.g. pda=0.4,gfs=0.3,cmbc=0.3)") from None
        if not math.isfinite(number) or number < 0:
            raise CMAAMError(f"score weight {name}={value} must be a finite number >= 0")
        weights[name] = number
    return weights


def alignment(scores: Mapping[str, float | None], weights: Mapping[str, float]) -> float:
    """A = weighted mean of the scores present (weights renormalised over them); 1 when none applies."""
    present = [(scores[name], weight) for name, weight in weights.items()
               if weight > 0 and scores.get(name) is not None]
    total = sum(weight for _, weight in present)
    if total == 0:
        return 1.0
    return sum(score * weight for score, weight in present) / total


def alpha_value(base_alpha: float, alignment_score: float, variance: float, alpha_min: float = 0.0,
                alpha_max: float = 1.0) -> float:
    """clip(base_alpha * A * (1 - v), alpha_min, alpha_max)."""
    return min(max(base_alpha * alignment_score * (1.0 - variance), alpha_min), alpha_max)


def _clipped_mean(alphas: Sequence[float], weights: Sequence[float], scale: float, low: float, high: float) -> float:
    total = sum(weights)
    return sum(w * min(max(scale * a, low), high) for a, w in zip(alphas, weights)) / total


def preserve_mean(alphas: Sequence[float], weights: Sequence[float], base_alpha: float, alpha_min: float = 0.0,
                  alpha_max: float = 1.0) -> list[float]:
    """Scale alphas by one factor c so their weighted mean is base_alpha, keeping them in [alpha_min, alpha_max].

    c is found by bisection on the clipped mean (monotone in c); when every alpha is 0 the
    shape carries no information and all become base_alpha. Unreachable means end at the bound.
    """
    if not alphas or sum(weights) <= 0:
        return list(alphas)
    if max(alphas) <= 0:
        return [min(max(base_alpha, alpha_min), alpha_max)] * len(alphas)
    mean = sum(w * a for a, w in zip(alphas, weights)) / sum(weights)
    scale = base_alpha / mean
    if abs(_clipped_mean(alphas, weights, scale, alpha_min, alpha_max) - base_alpha) > 1e-12:
        low, high = 0.0, max(1.0, alpha_max / min(a for a in alphas if a > 0))
        for _ in range(200):
            scale = (low + high) / 2
            if _clipped_mean(alphas, weights, scale, alpha_min, alpha_max) < base_alpha:
                low = scale
            else:
                high = scale
        scale = high
    return [min(max(scale * a, alpha_min), alpha_max) for a in alphas]
