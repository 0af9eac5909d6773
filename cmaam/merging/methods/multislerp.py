"""Multi-SLERP (barycentric interpolation on a hypersphere), as mergekit's ``multislerp``.

Each (flattened) tensor, or task vector when a base is given, is projected to the unit sphere; the
weighted mean direction is the tangent point; the weighted mean of the tangent vectors is mapped back
with the exponential map and scaled by the weighted mean norm. Two antipodal inputs fall back to the
weighted sum; more than two whose unit vectors cancel out are an error (as mergekit).
"""

from __future__ import annotations

import torch

from cmaam.core.errors import CMAAMError
from cmaam.merging.methods.common import check_shapes, per_model, require_count
from cmaam.merging.methods.registry import Parameter, register


@register("multislerp", parameters=(
    Parameter("weight", default=None, per_model=True, required=True),
    Parameter("normalize_weights", default=True),
    Parameter("eps", default=1e-8, minimum=0.0),
), optional_base=True)
def multislerp(tensors: list[torch.Tensor], base: torch.Tensor | None, weight: float | list[float],
               normalize_weights: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Multi-SLERP: weighted spherical barycentre of the models (or of their task vectors)."""
    require_count("multislerp", tensors, 1)
    check_shapes("multislerp", tensors, base)
    values = per_model("multislerp", "weight", weight, len(tensors))
    if len(tensors) == 1:
        return tensors[0]
    stacked = torch.stack(tensors, dim=0)
    if base is not None:
        stacked -= base
    flat = stacked.view(stacked.shape[0], -1)
    weights = torch.tensor([float(v) for v in values], dtype=stacked.dtype, device=stacked.device)
    if normalize_weights:
        weights = weights / weights.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * weights.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if stacked.shape[0] != 2:
            raise CMAAMError("multislerp: the weighted unit vectors cancel out (antipodal inputs with balancing "
                             "weights); change the weights")
        result = (stacked[0] * weights[0] + stacked[1] * weights[1]).view(stacked.shape[1:])
        return result + base if base is not None else result
    mean = mean / mean_norm
    tangents = units - (units * mean).sum(-1, keepdim=True) * mean
    tangent = (tangents * weights.view(-1, 1)).sum(0)
    tangent_norm = torch.norm(tangent) + eps
    result = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
    result = (result * (norms.squeeze(-1) * weights).sum()).view(stacked.shape[1:])
    return result + base if base is not None else result
