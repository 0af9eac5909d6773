"""CMBC, cross-modal bridge coherence: do the bridges of S and T write into the same subspaces?"""

from __future__ import annotations

import torch

from cmaam.merging.executor import wide_kernels

MAX_RANK = 32


def _top_eigenvectors(gram: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and the matching eigenvectors of a symmetric PSD matrix, top ``count``.

    Compute-bound: inside a run it gets every core (``wide_kernels``), as outside one.
    """
    with wide_kernels():
        values, vectors = torch.linalg.eigh(gram)
    order = torch.argsort(values, descending=True)[:count]
    return values[order].clamp(min=0), vectors[:, order]


def _numerical_rank(eigenvalues: torch.Tensor, shape: tuple[int, ...]) -> int:
    """Rank from Gram eigenvalues: those above lambda_max * max(shape) * eps_float32 (the Gram's rounding level)."""
    if eigenvalues.numel() == 0 or float(eigenvalues[0]) == 0.0:
        return 0
    tolerance = float(eigenvalues[0]) * max(shape) * torch.finfo(torch.float32).eps
    return int((eigenvalues > tolerance).sum())


def top_left_subspace(weight: torch.Tensor, count: int = MAX_RANK) -> tuple[torch.Tensor, int]:
    """Orthonormal basis (out, <=count) of the top left singular subspace of a (out, in) matrix and its rank.

    Computed from the eigenvectors of the smaller Gram matrix (W W^T or W^T W), in float32.
    """
    matrix = weight.reshape(weight.shape[0], -1).float()
    rows, columns = matrix.shape
    with wide_kernels():  # the Gram matrix's product: compute-bound
        gram = matrix @ matrix.T if rows <= columns else matrix.T @ matrix
    if rows <= columns:
        return left_subspace_from_gram(gram, tuple(matrix.shape), count)
    values, right = _top_eigenvectors(gram, count)
    rank = _numerical_rank(values, tuple(matrix.shape))
    left = matrix @ right[:, :rank] / values[:rank].sqrt()  # u_i = W v_i / s_i
    return torch.nn.functional.normalize(left, dim=0), rank


def left_subspace_from_gram(gram: torch.Tensor, shape: tuple[int, ...], count: int = MAX_RANK
                            ) -> tuple[torch.Tensor, int]:
    """``top_left_subspace`` of a (rows, columns) matrix with rows <= columns, from its Gram matrix W W^T."""
    values, vectors = _top_eigenvectors(gram, count)
    rank = _numerical_rank(values, shape)
    return vectors[:, :rank], rank


def embedding_subspace(embedding: torch.Tensor, count: int = MAX_RANK) -> torch.Tensor:
    """Orthonormal basis (hidden, <=count) of the top right singular subspace of a (vocab, hidden) embedding."""
    return top_left_subspace(embedding.reshape(embedding.shape[0], -1).T, count)[0]


def cmbc(source: torch.Tensor, target: torch.Tensor, embedding_basis: torch.Tensor | None = None,
         count: int = MAX_RANK) -> float:
    """overlap * (1 - |capture_S - capture_T|) for one bridge output matrix, in [0, 1].

    overlap = ||U_S^T U_T||_F^2 / k with k = min(count, rank_S, rank_T); capture_X = ||V_E^T U_X||_F^2 / k.
    The capture term is left out (CMBC = overlap) when ``embedding_basis`` is None or its width
    differs from the bridge's output dimension. Two zero matrices score 1, one zero matrix 0.
    """
    basis_s, rank_s = top_left_subspace(source.float(), count)
    basis_t, rank_t = top_left_subspace(target.float(), count)
    k = min(count, rank_s, rank_t)
    if k == 0:
        return 1.0 if rank_s == rank_t == 0 else 0.0
    basis_s, basis_t = basis_s[:, :k], basis_t[:, :k]
    overlap = float((basis_s.T @ basis_t).square().sum()) / k
    if embedding_basis is None or embedding_basis.shape[0] != basis_s.shape[0]:
        return min(overlap, 1.0)
    embedding_basis = embedding_basis[:, :k].to(basis_s.device)
    capture_s = float((embedding_basis.T @ basis_s).square().sum()) / k
    capture_t = float((embedding_basis.T @ basis_t).square().sum()) / k
    return min(overlap, 1.0) * (1.0 - abs(capture_s - capture_t))
