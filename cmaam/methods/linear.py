"""Linear (weighted average) merge, as mergekit's ``linear``."""

from __future__ import annotations

import torch

from cmaam.methods.registry import Parameter, register


@register("linear", parameters=(
    Parameter("weight", default=None, per_model=True, required=True),
    Parameter("normalize", default=True),
))
def linear(tensors: list[torch.Tensor], base: torch.Tensor | None, weight: list[float], normalize: bool = True) -> torch.Tensor:
    """Weighted sum of the tensors, divided by the sum of weights when ``normalize``."""
    stacked = torch.stack(tensors, dim=0)
    weights = torch.tensor(weight, dtype=stacked.dtype, device=stacked.device)
    while weights.dim() < stacked.dim():
        weights = weights.unsqueeze(-1)
    result = (weights * stacked).sum(dim=0)
    if normalize:
        result = result / weights.sum(dim=0)
    return result
