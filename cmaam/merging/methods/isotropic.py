"""Iso-C and Iso-CTS (Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and
Task-Specific Subspaces", ICML 2025).

Iso-C: the summed task matrix Delta = sum_i Delta_i = U S V^T gets a flat spectrum:
base + lambda * mean(S) U V^T, so no task's directions are drowned by the dominant shared ones.
Iso-CTS: keep the top k of Delta's r = min(rows, columns) directions as the common subspace
(k = r - T * round((r - floor(f r)) / T), f = ``common_space_fraction``), give each task the top
(r - k) / T left/right singular vectors of its matrix with the common left subspace projected out,
orthogonalise the concatenated bases (polar factors) and flatten the spectrum to the mean of the
collected singular values. Tensors that are not 2-D get base + lambda * mean task vector (as the papers).
"""

from __future__ import annotations

import torch

from cmaam.merging.methods.registry import Parameter, register
from cmaam.merging.methods.subspace import LAMBDA, WEIGHT, add_update, mean_merge, orthogonal_factor, task_vectors


def iso_c_update(deltas: list[torch.Tensor]) -> torch.Tensor:
    """mean(S) U V^T of the summed task matrices."""
    left, singular, right = torch.linalg.svd(sum(deltas), full_matrices=False)
    return singular.mean() * (left @ right)


def subspace_sizes(rank: int, tasks: int, common_space_fraction: float) -> tuple[int, int]:
    """(common directions, directions per task), summing to ``rank``, as the authors' code splits them."""
    common = int(rank * common_space_fraction)
    per_task = min(round((rank - common) / tasks), rank // tasks)
    return rank - per_task * tasks, per_task


def iso_cts_update(deltas: list[torch.Tensor], common_space_fraction: float) -> torch.Tensor:
    """Common subspace of the sum plus each task's own top directions outside it, flat spectrum."""
    rank = min(deltas[0].shape)
    common, per_task = subspace_sizes(rank, len(deltas), common_space_fraction)
    left, singular, right = torch.linalg.svd(sum(deltas), full_matrices=False)
    lefts, values, rights = [], [], []
    common_left = left[:, :common]
    for delta in deltas:
        specific = delta - common_left @ (common_left.T @ delta)
        task_left, task_singular, task_right = torch.linalg.svd(specific, full_matrices=False)
        lefts.append(task_left[:, :per_task])
        values.append(task_singular[:per_task])
        rights.append(task_right[:per_task])
    lefts.append(common_left)
    values.append(singular[:common])
    rights.append(right[:common])
    combined_left = orthogonal_factor(torch.cat(lefts, dim=1))
    combined_right = orthogonal_factor(torch.cat(rights, dim=0))
    return torch.cat(values).mean() * (combined_left @ combined_right)


@register("iso_c", parameters=(WEIGHT, LAMBDA), requires_base=True)
def iso_c(tensors: list[torch.Tensor], base: torch.Tensor, weight: float | list[float] = 1.0,
          lambda_: float = 1.0) -> torch.Tensor:
    """Iso-C: task arithmetic's summed matrix with its singular values replaced by their mean."""
    deltas = task_vectors("iso_c", tensors, base, weight)
    if base.dim() != 2:
        return mean_merge(base, deltas, lambda_)
    return add_update(base, iso_c_update(deltas), lambda_)


@register("iso_cts", parameters=(WEIGHT, LAMBDA,
                                 Parameter("common_space_fraction", default=0.8, minimum=0.0, maximum=1.0)),
          requires_base=True)
def iso_cts(tensors: list[torch.Tensor], base: torch.Tensor, weight: float | list[float] = 1.0,
            lambda_: float = 1.0, common_space_fraction: float = 0.8) -> torch.Tensor:
    """Iso-CTS: isotropic merge in the common subspace plus each task's own directions."""
    deltas = task_vectors("iso_cts", tensors, base, weight)
    if base.dim() != 2:
        return mean_merge(base, deltas, lambda_)
    return add_update(base, iso_cts_update(deltas, float(common_space_fraction)), lambda_)
