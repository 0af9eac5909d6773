"""NuSLERP, as mergekit's ``nuslerp``: slerp between exactly two models, weighted like ``linear``.

t = w_2 / (w_1 + w_2) (0.5 when the weights sum to ~0). With a base model the two task vectors are
interpolated and added back to the base (mergekit's BasePolicy.OPTIONAL). ``nuslerp_flatten`` (default)
treats the tensor as one vector; otherwise each row (``nuslerp_row_wise``: each column) is interpolated on
its own. Nearly collinear pairs (1 - cos^2 <= eps^2) fall back to linear interpolation.
"""

from __future__ import annotations

import torch

from cmaam.merging.methods.common import check_shapes, per_model, require_count
from cmaam.merging.methods.registry import Parameter, register

EPS = 1e-8
NORM_EPS = 1e-7


def nuslerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor, dim: int = -1, eps: float = EPS,
                    flatten: bool = False) -> torch.Tensor:
    """Slerp from ``v0`` (t=0) to ``v1`` (t=1) along ``dim`` (or over the flattened tensor)."""
    out_shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    unit0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=NORM_EPS)
    unit1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=NORM_EPS)
    cos_theta = torch.sum(unit0 * unit1, dim=-1, keepdim=True).clamp(-1, 1)
    collinear = (1 - cos_theta.square()) <= eps ** 2
    theta = torch.acos(torch.where(collinear, 0, cos_theta))
    result = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    result = torch.where(collinear, (1 - t) * v0 + t * v1, result)
    if dim != -1 and not flatten:
        result = result.transpose(dim, -1)
    return result.reshape(out_shape)


@register("nuslerp", parameters=(
    Parameter("weight", default=None, per_model=True, required=True),
    Parameter("nuslerp_row_wise", default=False),
    Parameter("nuslerp_flatten", default=True),
), optional_base=True)
def nuslerp(tensors: list[torch.Tensor], base: torch.Tensor | None, weight: float | list[float],
            nuslerp_row_wise: bool = False, nuslerp_flatten: bool = True) -> torch.Tensor:
    """NuSLERP: slerp between two models (or their task vectors) at t = w_2 / (w_1 + w_2)."""
    require_count("nuslerp", tensors, 2, 2)
    check_shapes("nuslerp", tensors, base)
    weights = [float(value) for value in per_model("nuslerp", "weight", weight, 2)]
    total = sum(weights)
    t = 0.5 if abs(total) < 1e-6 else weights[1] / total
    dim = 0 if nuslerp_row_wise else -1
    if base is None:
        return nuslerp_tensors(t, tensors[0], tensors[1], dim=dim, flatten=nuslerp_flatten)
    return base + nuslerp_tensors(t, tensors[0] - base, tensors[1] - base, dim=dim, flatten=nuslerp_flatten)
