"""WUDI-Merging (Cheng et al., "Whoever Started the Interference Should End It: Guiding Data-Free Model
Merging via Task Vectors", ICML 2025).

A linear layer's task vector spans (approximately) the inputs it was trained on, so the merged update
tau of each 2-D tensor minimises the interference measured on the task vectors themselves:

    L(tau) = sum_i ||(tau - tau_i) tau_i^T||_F^2 / ||tau_i||_F^2

As the paper: Adam (betas 0.9/0.999, eps 1e-8) for ``iterations`` steps at ``learning_rate`` from
tau = sum_i tau_i, without a scaling coefficient. The gradient 2 (tau G - C), with G = sum_i tau_i^T tau_i /
||tau_i||^2 and C = sum_i tau_i tau_i^T tau_i / ||tau_i||^2, is computed from those two precomputed
products: the same steps as autograd on L, one (rows x columns x columns) product per step.
``closed_form`` returns L's exact minimiser C G^+ instead (no learning rate to pick). Tasks whose task
vector is zero in a tensor are left out of L (the paper's code would divide by zero); other tensors get
base + mean task vector.
"""

from __future__ import annotations

import torch

from cmaam.merging.methods.registry import Parameter, register
from cmaam.merging.methods.subspace import WEIGHT, add_update, mean_merge, task_vectors

BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def interference_products(deltas: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, C): sum_i tau_i^T tau_i / n_i and sum_i tau_i tau_i^T tau_i / n_i, n_i = ||tau_i||_F^2 > 0."""
    gram = deltas[0].new_zeros((deltas[0].shape[1], deltas[0].shape[1]))
    target = torch.zeros_like(deltas[0])
    for delta in deltas:
        task_gram = delta.T @ delta / delta.square().sum()
        gram += task_gram
        target += delta @ task_gram
    return gram, target


def wudi_update(deltas: list[torch.Tensor], iterations: int = 300, learning_rate: float = 1e-5,
                closed_form: bool = False) -> torch.Tensor:
    """The merged task matrix minimising the WUDI interference loss (Adam steps, or exactly)."""
    active = [delta for delta in deltas if bool(delta.any())]
    if not active:
        return torch.zeros_like(deltas[0])
    gram, target = interference_products(active)
    if closed_form:
        return target @ torch.linalg.pinv(gram, hermitian=True)
    merged = sum(active)
    first, second = torch.zeros_like(merged), torch.zeros_like(merged)
    for step in range(1, int(iterations) + 1):
        gradient = 2 * (merged @ gram - target)
        first.mul_(BETAS[0]).add_(gradient, alpha=1 - BETAS[0])
        second.mul_(BETAS[1]).addcmul_(gradient, gradient, value=1 - BETAS[1])
        denominator = (second.sqrt() / (1 - BETAS[1] ** step) ** 0.5).add_(ADAM_EPS)
        merged.addcdiv_(first, denominator, value=-learning_rate / (1 - BETAS[0] ** step))
    return merged


@register("wudi", parameters=(
    WEIGHT,
    Parameter("iterations", default=300, minimum=0),
    Parameter("learning_rate", default=1e-5, minimum=0.0),
    Parameter("closed_form", default=False),
), requires_base=True)
def wudi(tensors: list[torch.Tensor], base: torch.Tensor, weight: float | list[float] = 1.0, iterations: int = 300,
         learning_rate: float = 1e-5, closed_form: bool = False) -> torch.Tensor:
    """WUDI-Merging: the update minimising each task's interference on its own task-vector subspace."""
    deltas = task_vectors("wudi", tensors, base, weight)
    if base.dim() != 2:
        return mean_merge(base, deltas)
    return add_update(base, wudi_update(deltas, int(iterations), float(learning_rate), bool(closed_form)))
