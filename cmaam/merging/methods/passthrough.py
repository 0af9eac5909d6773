"""Passthrough, as mergekit's ``passthrough``: copy the single input, optionally scaled.

Layer slicing and frankenmerges (which tensor of which model lands where) are planned by the
caller; this is the per-tensor part.
"""

from __future__ import annotations

import torch

from cmaam.core.errors import CMAAMError
from cmaam.merging.methods.common import per_model
from cmaam.merging.methods.registry import Parameter, register


@register("passthrough", parameters=(Parameter("scale", default=None, per_model=True),), row_local=True)
def passthrough(tensors: list[torch.Tensor], base: torch.Tensor | None,
                scale: float | list | None = None) -> torch.Tensor:
    """The one input tensor (the base when no other is given), times ``scale`` when set."""
    inputs = list(tensors) or ([base] if base is not None else [])
    if len(inputs) != 1:
        raise CMAAMError(f"passthrough: takes exactly one input tensor, got {len(inputs)}")
    value = per_model("passthrough", "scale", scale, 1)[0]
    return inputs[0] if value is None else inputs[0] * value
