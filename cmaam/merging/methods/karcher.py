"""Karcher mean (Riemannian centre of mass on the unit sphere), as mergekit's ``karcher``.

Every input (the base too, when listed: mergekit ignores the base role here) gets weight 1/N. The
direction is the fixed point of the Riemannian gradient iteration, started at the normalised
weighted mean, for at most ``max_iter`` steps or until the tangent norm falls below ``tol``; the
magnitude is the mean of the input norms. Inputs with norm <= ``tol`` do not steer the direction.
"""

from __future__ import annotations

import torch

from cmaam.merging.methods.common import check_shapes, require_count
from cmaam.merging.methods.registry import Parameter, register


def karcher_mean(tensors: list[torch.Tensor], alphas: list[float], max_iter: int = 10,
                 tol: float = 1e-5) -> torch.Tensor:
    """Weighted Karcher mean of ``tensors``: direction on the sphere, scaled by sum(alpha_i * |x_i|)."""
    if len(tensors) == 1:
        return tensors[0]
    dtype = torch.float64 if tensors[0].dtype == torch.float64 else torch.float32
    norms = [torch.linalg.vector_norm(tensor.to(dtype)) for tensor in tensors]
    units = [torch.zeros_like(tensor) if norm.item() == 0.0 else (tensor / norm).to(tensor.dtype)
             for tensor, norm in zip(tensors, norms)]
    valid = [index for index, norm in enumerate(norms) if norm.item() > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    alpha_sum = sum(alphas[index] for index in valid)
    weights = [alphas[index] / alpha_sum for index in valid]
    points = [units[index] for index in valid]

    mean = torch.zeros_like(points[0])
    for weight, point in zip(weights, points):
        mean += weight * point
    mean_norm = torch.linalg.vector_norm(mean.to(dtype))
    mean = points[0].clone() if mean_norm.item() < tol else (mean / mean_norm).to(mean.dtype)
    for _ in range(max_iter):
        tangent = torch.zeros_like(mean)
        for weight, point in zip(weights, points):
            cosine = torch.clamp(torch.dot(mean.flatten(), point.flatten()), -1.0, 1.0)
            theta = torch.arccos(cosine)
            if theta.item() < tol:
                continue
            tangent += weight * (theta / torch.sin(theta)) * (point - cosine * mean)
        tangent_norm = torch.linalg.vector_norm(tangent.to(dtype))
        if tangent_norm.item() < tol:
            break
        mean = (torch.cos(tangent_norm) * mean + torch.sin(tangent_norm) * (tangent / tangent_norm)).to(mean.dtype)
        unit_norm = torch.linalg.vector_norm(mean.to(dtype))
        if unit_norm.item() > tol:
            mean = (mean / unit_norm).to(mean.dtype)
    return sum(alpha * norm for alpha, norm in zip(alphas, norms)) * mean


@register("karcher", parameters=(
    Parameter("max_iter", default=10, minimum=0),
    Parameter("tol", default=1e-5, minimum=0.0),
))
def karcher(tensors: list[torch.Tensor], base: torch.Tensor | None, max_iter: int = 10,
            tol: float = 1e-5) -> torch.Tensor:
    """Karcher mean: equal-weight spherical mean direction of the inputs times their mean norm.

    Base-less like ``linear``: the YAML runner passes a listed base model among ``tensors``.
    """
    require_count("karcher", tensors, 1)
    check_shapes("karcher", tensors)
    return karcher_mean(tensors, [1.0 / len(tensors)] * len(tensors), max_iter=int(max_iter), tol=float(tol))
