"""Linear (weighted average) merge, as mergekit's ``linear``."""

from __future__ import annotations

import torch

from cmaam.core.errors import CMAAMError
from cmaam.merging.methods.registry import Parameter, register


@register("linear", parameters=(
    Parameter("weight", default=None, per_model=True, required=True),
    Parameter("normalize", default=True),
), row_local=True, propagates_nonfinite=True)
def linear(tensors: list[torch.Tensor], base: torch.Tensor | None, weight: list[float],
           normalize: bool = True) -> torch.Tensor:
    """Weighted sum of the tensors, divided by the sum of weights when ``normalize``.

    Accumulated in place, as mergekit's addcmul loop: one output buffer instead of stacking every input.
    """
    weights = list(weight) if isinstance(weight, (list, tuple)) else [weight] * len(tensors)
    if len(weights) != len(tensors):
        raise CMAAMError(f"linear: parameter weight has {len(weights)} values for {len(tensors)} model(s)")
    # 0 + w * first, the zero a 0-d tensor: no pass to fill zeros, the same rounding as adding onto zeros
    result = torch.add(tensors[0].new_zeros(()), tensors[0], alpha=float(weights[0]))
    for tensor, value in zip(tensors[1:], weights[1:]):
        result.add_(tensor, alpha=float(value))
    total = torch.tensor(weights, dtype=result.dtype).sum().item() if normalize else 1.0
    if total != 1.0:  # dividing by exactly 1 changes no bit
        result.div_(total)
    return result
