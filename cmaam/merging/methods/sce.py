"""SCE (Select, Calculate, Erase; Wan et al. 2024, arXiv:2408.07990), as mergekit's ``sce``.

Select: with ``select_topk`` < 1 keep the fraction of entries whose variance across the task vectors is
largest (of those with non-zero variance). Calculate: each model's weight is the mean square of its
(selected) task vector, normalised to sum 1. Erase: drop entries against the sign of their sum (TIES),
then average the rest by those weights.
"""

from __future__ import annotations

import torch

from cmaam.merging.methods.common import check_shapes
from cmaam.merging.methods.generalized import consensus_mask
from cmaam.merging.methods.registry import Parameter, register


def variance_mask(deltas: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mask (in ``deltas``' dtype) of the ``fraction`` of entries with the largest variance across models."""
    if fraction <= 0:
        return torch.zeros_like(deltas[0])
    if fraction >= 1:
        return torch.ones_like(deltas[0])
    variance = torch.var(deltas, dim=0, unbiased=False)
    count = int(torch.count_nonzero(variance) * fraction)
    mask = torch.zeros_like(variance)
    if count:
        mask.view(-1)[torch.topk(variance.abs().view(-1), k=count, largest=True).indices] = 1
    return mask


def model_weights(deltas: torch.Tensor) -> torch.Tensor:
    """Per-model weights: the mean square of each task vector, normalised to sum 1 (uniform if all ~0)."""
    weights = deltas.square().reshape(deltas.shape[0], -1).mean(dim=1)
    total = torch.sum(weights).item()
    if abs(total) < 1e-6:
        return torch.ones_like(weights) / weights.shape[0]
    return weights / total


@register("sce", parameters=(
    Parameter("select_topk", default=1.0, minimum=0.0, maximum=1.0),
    Parameter("int8_mask", default=False),
), requires_base=True)
def sce(tensors: list[torch.Tensor], base: torch.Tensor, select_topk: float = 1.0,
        int8_mask: bool = False) -> torch.Tensor:
    """SCE: variance-based selection, mean-square model weights, TIES sign erase."""
    if not tensors:
        return base
    check_shapes("sce", tensors, base)
    deltas = torch.stack([tensor - base for tensor in tensors], dim=0)
    if select_topk < 1:
        deltas = deltas * variance_mask(deltas, float(select_topk)).unsqueeze(0)
    erase = consensus_mask(deltas, "sum")
    weights = model_weights(deltas)
    while weights.dim() < deltas.dim():
        weights = weights.unsqueeze(-1)
    kept = weights * erase
    return base + (deltas * kept).sum(dim=0) / torch.sum(kept, dim=0).clamp(min=1e-6)
