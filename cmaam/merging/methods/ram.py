"""RAM and RAM+ (Reinforced Agent Merging, arXiv:2601.13572), as mergekit's ``ram`` and ``ramplus_tl``.

An entry of a task vector counts when |delta| > ``epsilon``. Entries only one model changed are kept
whole (not averaged down); entries several models changed are averaged over those models.
``ramplus_tl`` (tensor-local RAM+) also scales each model's unique entries by
1 + r * clamp(shared_i / unique_i, 0, alpha), counted within the tensor.
"""

from __future__ import annotations

import torch

from cmaam.merging.methods.common import check_shapes
from cmaam.merging.methods.registry import Parameter, register


def ram_masks(tensors: list[torch.Tensor], base: torch.Tensor, epsilon: float):
    """Flattened task vectors, the mask of entries that count, per-entry model counts, overlap and unique masks."""
    deltas = torch.stack([tensor - base for tensor in tensors], dim=0).view(len(tensors), -1)
    counted = deltas.abs() > epsilon
    counts = counted.sum(dim=0, keepdim=True)
    return deltas, counted, counts, counts > 1, counts == 1


def ram_merge(tensors: list[torch.Tensor], base: torch.Tensor, epsilon: float, r: float | None = None,
              alpha: float = 0.0, method: str = "ram") -> torch.Tensor:
    """RAM (``r`` None) or RAM+ with unique-entry boost ``1 + r * clamp(shared/unique, 0, alpha)``."""
    if not tensors:
        return base
    check_shapes(method, tensors, base)
    deltas, counted, counts, overlap, unique = ram_masks(tensors, base, epsilon)
    deltas = deltas * counted
    unique_part = deltas * unique
    if r is not None:
        shared_counts = (counted & overlap).sum(dim=1)
        unique_counts = (counted & unique).sum(dim=1)
        ratio = shared_counts / unique_counts.clamp(min=epsilon)
        unique_part = unique_part * (1 + r * ratio.clamp(min=0, max=alpha)).unsqueeze(-1)
    merged = (unique_part + deltas * overlap / counts.clamp(min=1)).sum(dim=0, keepdim=True)
    return base + merged.reshape_as(base)


@register("ram", parameters=(Parameter("epsilon", default=1e-5, minimum=0.0),), requires_base=True)
def ram(tensors: list[torch.Tensor], base: torch.Tensor, epsilon: float = 1e-5) -> torch.Tensor:
    """RAM: unique task-vector entries kept whole, shared ones averaged over the models that changed them."""
    return ram_merge(tensors, base, float(epsilon))


@register("ramplus_tl", parameters=(
    Parameter("r", default=0.1, minimum=0.0),
    Parameter("alpha", default=0.2, minimum=0.0),
    Parameter("epsilon", default=1e-5, minimum=0.0),
), requires_base=True)
def ramplus_tl(tensors: list[torch.Tensor], base: torch.Tensor, r: float = 0.1, alpha: float = 0.2,
               epsilon: float = 1e-5) -> torch.Tensor:
    """RAM+ (tensor-local): RAM with each model's unique entries boosted by its shared/unique ratio."""
    return ram_merge(tensors, base, float(epsilon), r=float(r), alpha=float(alpha), method="ramplus_tl")
