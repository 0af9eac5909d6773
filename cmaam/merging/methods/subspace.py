"""Pieces shared by the data-free subspace methods (tsv, iso_c, iso_cts, wudi).

Each works on the task vectors w_i (x_i - base) of one tensor: 2-D tensors get the subspace treatment,
every other tensor (norms, biases) falls back to base + lambda * mean_i(w_i (x_i - base)), as the papers'
code (FusionBench, the authors' repositories) does.
"""

from __future__ import annotations

import torch

from cmaam.core.errors import CMAAMError
from cmaam.merging.methods.common import check_shapes, per_model
from cmaam.merging.methods.registry import Parameter

WEIGHT = Parameter("weight", default=1.0, per_model=True)
LAMBDA = Parameter("lambda_", default=1.0)


def task_vectors(method: str, tensors: list[torch.Tensor], base: torch.Tensor,
                 weight: float | list[float] = 1.0) -> list[torch.Tensor]:
    """w_i (x_i - base) in float32 (float64 kept), one per model."""
    if not tensors:
        raise CMAAMError(f"{method}: needs at least 1 model besides the base, got 0")
    check_shapes(method, tensors, base)
    weights = per_model(method, "weight", weight, len(tensors))
    dtype = torch.float64 if base.dtype == torch.float64 else torch.float32
    return [float(w) * (tensor.to(dtype) - base.to(dtype)) for tensor, w in zip(tensors, weights)]


def mean_merge(base: torch.Tensor, deltas: list[torch.Tensor], lambda_: float = 1.0) -> torch.Tensor:
    """The papers' fallback for tensors without a subspace treatment: base + lambda * mean task vector."""
    return (base + float(lambda_) * (sum(deltas) / len(deltas))).to(base.dtype)


def add_update(base: torch.Tensor, update: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """base + lambda * update, in the base's dtype."""
    return (base + float(lambda_) * update).to(base.dtype)


def orthogonal_factor(matrix: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor P Q^T of ``matrix`` = P diag(s) Q^T: the nearest matrix with orthonormal
    columns (or rows, for a wide matrix) in Frobenius norm (Procrustes)."""
    left, _, right = torch.linalg.svd(matrix, full_matrices=False)
    return left @ right
