"""Model Stock (Jang et al. 2024, arXiv:2403.19522), as mergekit's ``model_stock``.

t = N cos / (1 + (N - 1) cos) from the mean pairwise cosine of the task vectors (per tensor, or per
output row with ``filter_wise``); result = t * mean(models) + (1 - t) * base. Where the denominator
vanishes the base is kept.
"""

from __future__ import annotations

import torch

from cmaam.merging.methods.common import check_shapes, require_count
from cmaam.merging.methods.registry import Parameter, register


@register("model_stock", parameters=(Parameter("filter_wise", default=False),), requires_base=True)
def model_stock(tensors: list[torch.Tensor], base: torch.Tensor, filter_wise: bool = False) -> torch.Tensor:
    """Model Stock: interpolate between the base and the models' mean by their task-vector geometry."""
    require_count("model_stock", tensors, 2)
    check_shapes("model_stock", tensors, base)
    out_shape = base.shape
    if filter_wise:
        w_0 = base.unsqueeze(0) if base.dim() == 1 else base
        ws = [w.unsqueeze(0) for w in tensors] if base.dim() == 1 else list(tensors)
    else:
        w_0, ws = base.reshape(-1), [w.reshape(-1) for w in tensors]
    offsets = [w - w_0 for w in ws]
    cosines = []
    for index, offset_a in enumerate(offsets):
        for offset_b in offsets[index + 1:]:
            norm_product = torch.norm(offset_a, dim=-1) * torch.norm(offset_b, dim=-1)
            cosines.append(((offset_a * offset_b).sum(dim=-1) / norm_product.clamp(min=1e-6)).clamp(-1, 1))
    cos_theta = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    count = len(ws)
    denominator = 1 + (count - 1) * cos_theta
    singular = denominator.abs() < 1e-6
    safe_denominator = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos_theta), (count * cos_theta) / safe_denominator)
    average = sum(ws) / count
    return (t * average + (1 - t) * w_0).reshape(out_shape)
