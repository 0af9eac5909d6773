"""NearSwap, as mergekit's ``nearswap``: take the other model's value where it is near the base's.

Per entry, weight = clamp(t / |base - model|, 0, 1) (the difference floored at 1e-6); result =
weight * model + (1 - weight) * base. Entries closer than ``t`` are swapped in whole, far ones barely move.
"""

from __future__ import annotations

import torch

from cmaam.merging.methods.common import check_shapes, require_count
from cmaam.merging.methods.registry import Parameter, register


@register("nearswap", parameters=(Parameter("t", default=None, required=True, minimum=0.0),), requires_base=True)
def nearswap(tensors: list[torch.Tensor], base: torch.Tensor, t: float) -> torch.Tensor:
    """NearSwap: interpolate each entry towards the model by t / |difference| (at most all the way)."""
    require_count("nearswap", tensors, 1, 1)
    check_shapes("nearswap", tensors, base)
    other = tensors[0]
    weight = (float(t) / torch.abs(base - other).clamp(min=1e-6)).clamp(min=0, max=1)
    return weight * other + (1 - weight) * base
