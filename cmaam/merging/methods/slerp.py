"""Spherical linear interpolation between the base and one other model, as mergekit's ``slerp``.

The angle comes from the normalised flattened tensors; nearly collinear or antipodal pairs
(|cos| > ``DOT_THRESHOLD``) fall back to linear interpolation, and near-zero tensors (norm <= ``EPS``)
are left unnormalised. The coefficients are applied to the original (unnormalised) tensors.
"""

from __future__ import annotations

import math

import torch

from cmaam.core.errors import CMAAMError
from cmaam.merging.methods.common import check_shapes, require_count
from cmaam.merging.methods.registry import Parameter, register

DOT_THRESHOLD = 0.9995
EPS = 1e-8
CHUNK_ELEMENTS = 1024 * 1024  # bounds float32 scratch for huge tensors, as mergekit


def _chunks(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype):
    """Successive column chunks of the flattened inputs, converted to the compute dtype."""
    for start in range(0, a.shape[1], CHUNK_ELEMENTS):
        yield start, a[:, start:start + CHUNK_ELEMENTS].to(dtype), b[:, start:start + CHUNK_ELEMENTS].to(dtype)


def slerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = DOT_THRESHOLD,
                  eps: float = EPS) -> torch.Tensor:
    """Interpolate from ``v0`` (t=0) to ``v1`` (t=1) along the great circle; computed in float32 (float64 kept)."""
    dtype = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a, b = v0.reshape(1, -1), v1.reshape(1, -1)
    t = torch.tensor(float(t), dtype=dtype, device=v0.device).reshape(1, 1)
    if not a.shape[1]:
        return ((1 - t) * a + t * b).reshape(v0.shape).to(v0.dtype)
    norm_parts_a, norm_parts_b = [], []
    for _, x, y in _chunks(a, b, dtype):
        norm_parts_a.append(torch.linalg.vector_norm(x, dim=1, keepdim=True))
        norm_parts_b.append(torch.linalg.vector_norm(y, dim=1, keepdim=True))
    norm_a = torch.linalg.vector_norm(torch.stack(norm_parts_a), dim=0)
    norm_b = torch.linalg.vector_norm(torch.stack(norm_parts_b), dim=0)
    norm_a = torch.where(norm_a > eps, norm_a, 1)
    norm_b = torch.where(norm_b > eps, norm_b, 1)
    dot = torch.stack([((x / norm_a) * (y / norm_b)).sum(dim=1, keepdim=True)
                       for _, x, y in _chunks(a, b, dtype)]).sum(dim=0).clamp(-1, 1)
    linear = dot.abs() > dot_threshold
    theta = torch.acos(torch.where(linear, 0, dot))
    sin_theta = torch.sin(theta)
    coefficient_a = torch.where(linear, 1 - t, torch.sin((1 - t) * theta) / sin_theta)
    coefficient_b = torch.where(linear, t, torch.sin(t * theta) / sin_theta)
    result = torch.empty_like(a)
    for start, x, y in _chunks(a, b, dtype):
        result[:, start:start + CHUNK_ELEMENTS] = coefficient_a * x + coefficient_b * y
    return result.reshape(v0.shape)


@register("slerp", parameters=(Parameter("t", default=None, required=True, minimum=0.0, maximum=1.0),),
          requires_base=True)
def slerp(tensors: list[torch.Tensor], base: torch.Tensor, t: float) -> torch.Tensor:
    """SLERP from the base (t=0) to the single other model (t=1)."""
    require_count("slerp", tensors, 1, 1)
    check_shapes("slerp", tensors, base)
    if isinstance(t, (list, tuple)) or not math.isfinite(float(t)):
        raise CMAAMError(f"slerp: t must be one finite number per tensor, got {t!r} "
                         "(layer gradients are interpolated by the caller)")
    return slerp_tensors(float(t), base, tensors[0])
