"""GFS, gradient flow similarity (data-free): do S and T back-propagate random output gradients alike?"""

from __future__ import annotations

import functools

import torch

NUM_PROBES = 32
PROBE_SEED = 0


@functools.lru_cache(maxsize=32)
def _cpu_probes(rows: int, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, count, generator=generator, dtype=torch.float32)


def gradient_probes(rows: int, device: str | torch.device = "cpu", count: int = NUM_PROBES,
                    seed: int = PROBE_SEED) -> torch.Tensor:
    """``count`` fixed-seed Gaussian output-gradient probes as columns of a (rows, count) matrix.

    Drawn on the CPU so every device sees the same probes.
    """
    return _cpu_probes(rows, count, seed).to(device)


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A weight as (out, in): 2-D unchanged, conv and other 3-D+ kernels reshaped to (out, -1)."""
    return weight.reshape(weight.shape[0], -1) if weight.dim() != 2 else weight


def similarity_from(norm_source: torch.Tensor, norm_target: torch.Tensor, dot: torch.Tensor) -> torch.Tensor:
    """Per column: max(0, cos) * min(norm) / max(norm) from the column norms and dot products; two zero
    columns count as identical (1)."""
    larger = torch.maximum(norm_source, norm_target)
    smaller = torch.minimum(norm_source, norm_target)
    positive = larger > 0
    safe_large = torch.where(positive, larger, torch.ones_like(larger))
    safe_small = torch.where(smaller > 0, smaller, torch.ones_like(smaller))
    cosine = torch.where(smaller > 0, dot / (safe_large * safe_small), torch.zeros_like(dot))
    value = (cosine * smaller / safe_large).clamp(0.0, 1.0)
    return torch.where(positive, value, torch.ones_like(value))


def _similarity(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per column: max(0, cos) * min(norm) / max(norm); two zero columns count as identical (1)."""
    return similarity_from(torch.linalg.vector_norm(source, dim=0), torch.linalg.vector_norm(target, dim=0),
                           (source * target).sum(dim=0))


def gfs(source: torch.Tensor, target: torch.Tensor, count: int = NUM_PROBES, seed: int = PROBE_SEED) -> float:
    """mean over probes g of max(0, cos(W_S^T g, W_T^T g)) * min(n_S, n_T) / max(n_S, n_T), in [0, 1].

    1-D tensors (and scalars) compare the vectors themselves.
    """
    source = source.float()
    target = target.float()
    if source.dim() <= 1:
        return float(_similarity(source.reshape(-1, 1), target.reshape(-1, 1))[0])
    weight_s, weight_t = as_matrix(source), as_matrix(target)
    probes = gradient_probes(weight_s.shape[0], weight_s.device, count, seed)
    return float(_similarity(weight_s.T @ probes, weight_t.T @ probes).mean())
