"""Arcee Fusion, as mergekit's ``arcee_fusion``: take the other model's change only where it matters most.

importance = |model - base| * KL(softmax(model) || softmax(base)) (per row, over the last axis);
entries with importance >= median + 1.5 * IQR of the importances take the model's value, the rest keep
the base's. Quantiles are read off the sorted importances at index floor(q * (n - 1)); above
1,000,000 entries from a sample of that size drawn with replacement, as mergekit, but from a generator
seeded by ``seed`` (mergekit uses the unseeded global RNG).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmaam.merging.methods.common import check_shapes, require_count
from cmaam.merging.methods.registry import Parameter, register
from cmaam.merging.methods.sparsify import make_generator

QUANTILE_SAMPLE_SIZE = 1_000_000
KL_EPS = 1e-8


def importance(model: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """|model - base| times the row's KL divergence between the softmaxed model and base rows."""
    p = F.softmax(model, dim=-1) + KL_EPS
    q = F.softmax(base, dim=-1) + KL_EPS
    return (model - base).abs() * torch.sum(p * torch.log(p / q), dim=-1, keepdim=True)


def quantiles(values: torch.Tensor, q: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``q`` quantiles of ``values`` by index floor(q * (n - 1)) of the sorted (sampled, if large) values."""
    flat = values.reshape(-1)
    if flat.numel() > QUANTILE_SAMPLE_SIZE:
        flat = flat[torch.randint(flat.numel(), (QUANTILE_SAMPLE_SIZE,), generator=generator, device=flat.device)]
    ordered, _ = torch.sort(flat)
    return ordered[(q.to(ordered.device) * (ordered.numel() - 1)).long()]


@register("arcee_fusion", parameters=(Parameter("seed", default=0, minimum=0, maximum=2**63 - 1),),
          requires_base=True)
def arcee_fusion(tensors: list[torch.Tensor], base: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Arcee Fusion: the model's change where its importance is an upper outlier (median + 1.5 IQR)."""
    require_count("arcee_fusion", tensors, 1, 1)
    check_shapes("arcee_fusion", tensors, base)
    scores = importance(tensors[0], base)
    generator = make_generator(seed, base.device) if scores.numel() > QUANTILE_SAMPLE_SIZE else None
    first, median, third = quantiles(scores, torch.tensor([0.25, 0.5, 0.75]), generator)
    mask = (scores >= median + 1.5 * (third - first)).float()
    return base + (tensors[0] - base) * mask
