"""PDA, parameter distribution alignment: how close the value distributions of S and T are, in [0, 1]."""

from __future__ import annotations

import math

import numpy as np
import torch

NUM_QUANTILES = 1024
MAX_QUANTILE_SAMPLES = 1 << 16  # larger tensors are subsampled with a fixed stride (64 samples per quantile level)
EPS = 1e-8


def sample_stride(shape: tuple[int, ...], limit: int = MAX_QUANTILE_SAMPLES) -> int:
    """Smallest stride >= numel / limit that is coprime with the last dimension.

    A stride sharing a factor with the row length would sample only some columns and could miss
    outlier channels; a coprime stride visits every column.
    """
    count = math.prod(shape)
    stride = max(1, math.ceil(count / limit))
    width = shape[-1] if shape else 1
    while stride > 1 and math.gcd(stride, width) != 1:
        stride += 1
    return stride


def strided_sample(values: torch.Tensor, limit: int = MAX_QUANTILE_SAMPLES) -> torch.Tensor:
    """The flattened tensor, or every k-th element of it (fixed stride, see ``sample_stride``) when it holds more."""
    return values.reshape(-1)[::sample_stride(tuple(values.shape), limit)]


def sort_values(values: torch.Tensor) -> torch.Tensor:
    """Ascending sort of a 1-D tensor; on the CPU through NumPy's SIMD sort (about 15x faster than torch.sort)."""
    if values.device.type == "cpu":
        return torch.from_numpy(np.sort(values.contiguous().numpy()))
    return torch.sort(values).values


def quantiles(values: torch.Tensor, count: int = NUM_QUANTILES) -> torch.Tensor:
    """``count`` evenly spaced quantiles at levels (i + 0.5) / count, exact with linear interpolation."""
    ordered = sort_values(values.reshape(-1).float())
    positions = (torch.arange(count, dtype=torch.float64, device=ordered.device) + 0.5) / count * (ordered.numel() - 1)
    lower = positions.floor().long()
    upper = torch.clamp(lower + 1, max=ordered.numel() - 1)
    fraction = (positions - lower).float()
    return ordered[lower] + (ordered[upper] - ordered[lower]) * fraction


def quantile_distance(sample_source: torch.Tensor, sample_target: torch.Tensor, count: int = NUM_QUANTILES) -> float:
    """Mean |Q_S(q) - Q_T(q)| over ``count`` quantiles of two samples of values."""
    return float((quantiles(sample_source, count) - quantiles(sample_target, count)).abs().mean())


def wasserstein1(source: torch.Tensor, target: torch.Tensor, count: int = NUM_QUANTILES) -> float:
    """W1 distance of the two value distributions, as the mean |Q_S(q) - Q_T(q)| over ``count`` quantiles."""
    return quantile_distance(strided_sample(source), strided_sample(target), count)


def pda_value(distance: float, mean_abs_target: float) -> float:
    """exp(-W1 / (mean|T| + eps))."""
    return math.exp(-distance / (mean_abs_target + EPS))


def pda(source: torch.Tensor, target: torch.Tensor, count: int = NUM_QUANTILES) -> float:
    """exp(-W1(S, T) / (mean|T| + eps)): 1 for identical distributions, exp(-c/mean|T|) for a shift by c."""
    if source.numel() == 0:
        return 1.0
    return pda_value(wasserstein1(source, target, count), float(target.float().abs().mean()))
