"""Scores accumulated over row chunks: the whole-tensor functions' values, and independent of the memory budget."""

from __future__ import annotations

import math

import pytest
import torch

from cmaam.alignment.scores.analyzer import analyze_pair
from cmaam.alignment.scores.cmbc import embedding_subspace
from cmaam.alignment.scores.gfs import gfs
from cmaam.alignment.scores.pda import pda
from cmaam.alignment.scores.sensitivity import relative_change
from cmaam.alignment.scores.streaming import EmbeddingBasisAccumulator, PairScoreAccumulator
from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader
from cmaam.merging import executor


def chunked(accumulator, tensors, step):
    rows = tensors[0].shape[0]
    for start in range(0, rows, step):
        accumulator.add(start, *(tensor[start:start + step] for tensor in tensors))
    return accumulator.result()


@pytest.mark.parametrize("shape, step", [((300, 40), 7), ((257,), 10), ((24, 3, 2, 5, 5), 5), ((1000, 700), 64)])
def test_chunked_scores_equal_the_whole_tensor_functions(shape, step):
    generator = torch.Generator().manual_seed(0)
    target = torch.randn(shape, generator=generator)
    source = target + 0.3 * torch.randn(shape, generator=generator) + 0.05
    expected = (pda(source, target), gfs(source, target), relative_change(source, target))
    *result, changed = chunked(PairScoreAccumulator(shape), [source, target], step)
    assert result == pytest.approx(expected, rel=1e-5) and changed
    assert 0 < result[0] < 1 and 0 < result[1] < 1 and result[2] > 0.1  # not a degenerate pair


def test_identical_and_zero_pairs_score_as_the_whole_functions():
    tensor = torch.randn(50, 8)
    assert chunked(PairScoreAccumulator((50, 8)), [tensor, tensor], 9) == pytest.approx((1.0, 1.0, 0.0, False),
                                                                                        abs=1e-6)
    zeros = torch.zeros(50, 8)
    assert chunked(PairScoreAccumulator((50, 8)), [zeros, zeros], 9) == \
        pytest.approx((pda(zeros, zeros), gfs(zeros, zeros), relative_change(zeros, zeros), False))
    last_row = tensor.clone()
    last_row[-1, -1] += 1  # one entry in the last chunk: changed
    assert chunked(PairScoreAccumulator((50, 8)), [last_row, tensor], 9)[3]


def test_chunks_out_of_order_or_missing_are_refused():
    accumulator = PairScoreAccumulator((10, 4))
    accumulator.add(0, torch.ones(3, 4), torch.ones(3, 4))
    with pytest.raises(ValueError, match="does not continue"):
        accumulator.add(5, torch.ones(3, 4), torch.ones(3, 4))
    with pytest.raises(ValueError, match="only 3 of 10 rows"):
        accumulator.result()


@pytest.mark.parametrize("shape, step", [((5000, 48), 333), ((900, 30), 900)])
def test_embedding_basis_from_the_gram_matrix_spans_the_same_subspace(shape, step):
    generator = torch.Generator().manual_seed(1)
    # a clear spectrum (distinct singular values) so the subspace is well defined
    embedding = torch.randn(shape, generator=generator) * torch.linspace(3.0, 0.1, shape[1])
    expected = embedding_subspace(embedding)
    accumulator = EmbeddingBasisAccumulator(shape)
    for start in range(0, shape[0], step):
        accumulator.add(start, embedding[start:start + step])
    basis = accumulator.result()
    assert basis.shape == expected.shape
    assert torch.allclose(basis @ basis.T, expected @ expected.T, atol=1e-4)
    assert not EmbeddingBasisAccumulator.streams((30, 900)) and EmbeddingBasisAccumulator.streams(shape)


def test_pair_analysis_from_chunks_does_not_depend_on_the_budget(tiny_qwen2vl_pair, monkeypatch):
    target, source = (CheckpointReader(path) for path in tiny_qwen2vl_pair)
    whole = analyze_pair(source, target, ExecutionOptions(progress=False))
    monkeypatch.setattr(executor, "COMPUTE_CHUNK_ELEMENTS", 256)
    large = analyze_pair(source, target, ExecutionOptions(progress=False))
    small = analyze_pair(source, target, ExecutionOptions(max_memory="8KB", progress=False))
    chunked_names = [name for name in whole.tensors if target.numel(name) > 256]
    assert len(chunked_names) > 10
    assert small.tensors == large.tensors  # exactly: chunks are fixed by the shape, not by the budget
    assert small.capture_term == whole.capture_term
    for name, score in whole.tensors.items():
        other = small.tensors[name]
        assert other.changed == score.changed
        for field in ("pda", "gfs", "sensitivity", "cmbc"):
            expected, value = getattr(score, field), getattr(other, field)
            assert (value is None) == (expected is None), (name, field)
            if expected is not None:
                assert math.isclose(value, expected, rel_tol=1e-4, abs_tol=1e-6), (name, field, value, expected)
