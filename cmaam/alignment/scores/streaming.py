"""Scores of tensors larger than one compute chunk, accumulated over their row chunks in order.

The same quantities as the whole-tensor functions (``pda``, ``gfs``, ``relative_change``,
``embedding_subspace``), built from parts that add up over rows: the strided PDA sample (the very same
elements, hence the same quantiles), the sums of |T|, of squares and of S*T, the GFS projections
W^T P (a sum over rows of W) and the Gram matrix E^T E of the embedding. Only the order of the
floating-point additions differs (partial sums are added in float64), so the results agree with the
whole-tensor functions within float32 rounding (tests/alignment/test_streaming_scores.py). The chunks
are fixed by the tensor's shape (``cmaam.merging.executor.row_chunks``), never by the memory budget,
so a score does not depend on ``--max-memory``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from cmaam.alignment.scores.cmbc import MAX_RANK, left_subspace_from_gram
from cmaam.alignment.scores.gfs import NUM_PROBES, PROBE_SEED, as_matrix, gradient_probes, similarity_from
from cmaam.alignment.scores.pda import NUM_QUANTILES, pda_value, quantile_distance, sample_stride
from cmaam.alignment.scores.sensitivity import relative_change_from
from cmaam.merging.executor import wide_kernels

GRAM_ROWS = 1 << 12  # rows of E added to E^T E per matrix product (fewer, larger products run faster)
GRAM_PANEL = 512  # E^T E is symmetric: only its upper panels are computed (about 57% of the products)


class _RowOrder:
    """Checks that chunks arrive in row order, without gaps (every accumulator relies on it)."""

    def __init__(self, shape: Sequence[int]):
        self.shape = tuple(shape)
        self.width = math.prod(self.shape[1:]) if len(self.shape) > 1 else 1
        self.next_row = 0

    def advance(self, start: int, chunk: torch.Tensor) -> int:
        """Record rows [start, start + len(chunk)); return their count."""
        if start != self.next_row or tuple(chunk.shape[1:]) != self.shape[1:]:
            raise ValueError(f"chunk at row {start} of shape {tuple(chunk.shape)} does not continue a tensor of "
                             f"shape {self.shape} at row {self.next_row}")
        self.next_row += chunk.shape[0]
        return chunk.shape[0]

    @property
    def complete(self) -> bool:
        return self.next_row == (self.shape[0] if self.shape else 1)


class PairScoreAccumulator:
    """PDA, GFS, the relative change and whether anything changed, of one (source, target) tensor pair, fed row
    chunk by row chunk."""

    def __init__(self, shape: Sequence[int], device: str | torch.device = "cpu", probes: int = NUM_PROBES,
                 seed: int = PROBE_SEED, quantiles: int = NUM_QUANTILES):
        self.order = _RowOrder(shape)
        self.numel = math.prod(self.order.shape)
        self.stride = sample_stride(self.order.shape)
        self.quantiles = quantiles
        self.samples: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self.absolute_target = 0.0
        self.squares = [0.0, 0.0, 0.0]  # ||S||^2, ||T||^2, ||S - T||^2
        self.dot = 0.0  # S . T (GFS of a 1-D tensor)
        self.changed = False  # some entry of S differs from T's
        self.matrix = len(self.order.shape) >= 2
        if self.matrix:
            self.probes = gradient_probes(self.order.shape[0], device, probes, seed)
            self.projections = [torch.zeros(self.order.width, probes, dtype=torch.float64, device=device)
                                for _ in range(2)]

    def add(self, start: int, source: torch.Tensor, target: torch.Tensor) -> None:
        """Add rows [start, start + len(source)) of both tensors (the next rows, in order)."""
        rows = self.order.advance(start, target)
        self.changed = self.changed or not torch.equal(source, target)
        source, target = source.float(), target.float()
        flat_source, flat_target = source.reshape(-1), target.reshape(-1)
        first = (-start * self.order.width) % self.stride  # the strided sample's elements inside this chunk
        self.samples[0].append(flat_source[first::self.stride].clone())
        self.samples[1].append(flat_target[first::self.stride].clone())
        self.absolute_target += float(flat_target.abs().sum())
        difference = flat_source - flat_target
        for index, values in enumerate((flat_source, flat_target, difference)):
            self.squares[index] += float(torch.dot(values, values))
        if self.matrix:
            probes = self.probes[start:start + rows]
            self.projections[0] += (as_matrix(source).T @ probes).double()
            self.projections[1] += (as_matrix(target).T @ probes).double()
        else:
            self.dot += float(torch.dot(flat_source, flat_target))

    def result(self) -> tuple[float, float, float, bool]:
        """(pda, gfs, relative change, changed) of the whole pair; every row must have been added."""
        if not self.order.complete:
            raise ValueError(f"only {self.order.next_row} of {self.order.shape[0]} rows were added")
        if self.numel == 0:
            return 1.0, 1.0, 0.0, False
        distance = quantile_distance(torch.cat(self.samples[0]), torch.cat(self.samples[1]), self.quantiles)
        pda = pda_value(distance, self.absolute_target / self.numel)
        norm_source, norm_target, norm_difference = (math.sqrt(value) for value in self.squares)
        if self.matrix:
            source, target = (projection.float() for projection in self.projections)
            similarity = similarity_from(torch.linalg.vector_norm(source, dim=0),
                                         torch.linalg.vector_norm(target, dim=0), (source * target).sum(dim=0))
        else:
            similarity = similarity_from(torch.tensor([norm_source]), torch.tensor([norm_target]),
                                         torch.tensor([self.dot]))
        return (pda, float(similarity.mean()), relative_change_from(norm_source, norm_target, norm_difference),
                self.changed)


class EmbeddingBasisAccumulator:
    """``embedding_subspace`` of a (vocab, hidden) embedding with vocab >= hidden, from E^T E over row chunks.

    Rows are gathered into groups of GRAM_ROWS (fixed, so the sums do not depend on how chunks arrive)
    and each group adds G^T G to the Gram matrix, in float32 as the whole-tensor function computes it;
    only the panels on and above the diagonal are computed, the lower triangle is mirrored at the end.
    """

    def __init__(self, shape: Sequence[int], device: str | torch.device = "cpu", count: int = MAX_RANK):
        self.order = _RowOrder(shape)
        self.count = count
        self.gram = torch.zeros(self.order.width, self.order.width, dtype=torch.float32, device=device)
        self.pending: list[torch.Tensor] = []
        self.pending_rows = 0

    @staticmethod
    def streams(shape: Sequence[int]) -> bool:
        """Whether a tensor of ``shape`` can be done this way: its transpose's Gram is E^T E (vocab >= hidden)."""
        return len(shape) >= 2 and shape[0] >= math.prod(shape[1:])

    def add(self, start: int, embedding: torch.Tensor) -> None:
        """Add rows [start, start + len(embedding)) (the next rows, in order)."""
        rows = self.order.advance(start, embedding)
        self.pending.append(embedding.reshape(rows, -1).float())
        self.pending_rows += rows
        if self.pending_rows >= GRAM_ROWS or self.order.complete:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        group = self.pending[0] if len(self.pending) == 1 else torch.cat(self.pending)
        with wide_kernels():  # compute-bound: every core, even inside a run
            for start in range(0, self.order.width, GRAM_PANEL):
                stop = start + GRAM_PANEL
                self.gram[start:stop, start:].addmm_(group[:, start:stop].T, group[:, start:])
        self.pending, self.pending_rows = [], 0

    def result(self) -> torch.Tensor:
        """Orthonormal basis (hidden, <=count) of the embedding's top right singular subspace."""
        if not self.order.complete:
            raise ValueError(f"only {self.order.next_row} of {self.order.shape[0]} rows were added")
        self._flush()
        gram = torch.triu(self.gram) + torch.triu(self.gram, diagonal=1).T
        shape = (self.order.width, self.order.shape[0])  # of E^T, whose left subspace this is
        with wide_kernels():
            return left_subspace_from_gram(gram, shape, self.count)[0]
