"""TSV-Merge (Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging", CVPR 2025).

For each 2-D tensor with T task matrices Delta_i = U_i S_i V_i^T (thin SVD, r = min(rows, columns)): keep the
k = floor(r / T) leading singular triplets of each task, concatenate U = [U_1,k ... U_T,k],
S = diag(S_1,k ... S_T,k), V = [V_1,k ... V_T,k], decorrelate the tasks by replacing U and V with their
orthogonal polar factors (nearest orthonormal matrices), and add lambda * U_perp S V_perp^T to the base.
Tensors that are not 2-D, or have fewer than T rows or columns, get base + lambda * mean task vector.
"""

from __future__ import annotations

import torch

from cmaam.merging.methods.registry import register
from cmaam.merging.methods.subspace import LAMBDA, WEIGHT, add_update, mean_merge, orthogonal_factor, task_vectors


def tsv_update(deltas: list[torch.Tensor]) -> torch.Tensor:
    """The TSV-Merge update of 2-D task matrices with at least len(deltas) rows and columns."""
    keep = min(deltas[0].shape) // len(deltas)
    lefts, values, rights = [], [], []
    for delta in deltas:
        left, singular, right = torch.linalg.svd(delta, full_matrices=False)
        lefts.append(left[:, :keep])
        values.append(singular[:keep])
        rights.append(right[:keep])
    left = orthogonal_factor(torch.cat(lefts, dim=1))
    right = orthogonal_factor(torch.cat(rights, dim=0))
    return (left * torch.cat(values)) @ right


@register("tsv", parameters=(WEIGHT, LAMBDA), requires_base=True, aliases=("tsv_merge",))
def tsv(tensors: list[torch.Tensor], base: torch.Tensor, weight: float | list[float] = 1.0,
        lambda_: float = 1.0) -> torch.Tensor:
    """TSV-Merge: each task's top 1/T singular vectors, decorrelated across tasks by orthogonalisation."""
    deltas = task_vectors("tsv", tensors, base, weight)
    if base.dim() != 2 or min(base.shape) < len(deltas):
        return mean_merge(base, deltas, lambda_)
    return add_update(base, tsv_update(deltas), lambda_)
