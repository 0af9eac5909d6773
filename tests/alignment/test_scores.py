"""Score kernels against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from cmaam.alignment.scores import (cmbc, embedding_subspace, gfs, gradient_probes, pda, relative_change,
                                   sensitivity_variance)
from cmaam.alignment.scores.pda import quantiles, strided_sample, wasserstein1


@pytest.fixture
def weight():
    return torch.randn(48, 80, generator=torch.Generator().manual_seed(0))


def test_pda_identical_is_one(weight):
    assert pda(weight, weight.clone()) == 1.0


@pytest.mark.parametrize("shift", [0.01, 0.1, 0.5])
def test_pda_shifted_copy_is_exp_of_shift_over_mean_abs(weight, shift):
    expected = math.exp(-shift / float(weight.abs().mean()))
    assert pda(weight + shift, weight) == pytest.approx(expected, rel=1e-5)


def test_pda_uses_evenly_spaced_midpoint_quantiles():
    values = torch.arange(11, dtype=torch.float32)  # Q(q) = 10 q exactly
    expected = torch.tensor([(i + 0.5) / 4 * 10 for i in range(4)])
    assert torch.allclose(quantiles(values, 4), expected)
    reference = torch.quantile(values, (torch.arange(1024) + 0.5) / 1024)
    assert torch.allclose(quantiles(values), reference, atol=1e-5)


def test_pda_subsamples_huge_tensors_with_a_fixed_coprime_stride():
    from cmaam.alignment.scores.pda import MAX_QUANTILE_SAMPLES, sample_stride

    big = torch.arange(3_000_000, dtype=torch.float32)
    sample = strided_sample(big)
    stride = sample_stride(tuple(big.shape))
    assert sample.numel() <= MAX_QUANTILE_SAMPLES and torch.equal(sample[:3], torch.tensor([0.0, 1.0, 2.0]) * stride)
    assert wasserstein1(big + 2.0, big) == pytest.approx(2.0, rel=1e-6)  # a shift is still exact
    # 2-D: a stride sharing a factor with the row length would skip columns (outlier channels)
    matrix = torch.arange(2048 * 1024).reshape(2048, 1024)
    assert math.gcd(sample_stride((2048, 1024)), 1024) == 1
    assert len(set((strided_sample(matrix) % 1024).tolist())) == 1024


def test_gfs_reference_values(weight):
    assert gfs(weight, weight) == pytest.approx(1.0, abs=1e-6)
    assert gfs(-weight, weight) == 0.0
    assert gfs(2 * weight, weight) == pytest.approx(0.5, abs=1e-6)
    assert gfs(weight, 2 * weight) == pytest.approx(0.5, abs=1e-6)


def test_gfs_matches_the_probe_formula_computed_by_hand(weight):
    other = weight + 0.7 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(5))
    probes = gradient_probes(weight.shape[0])
    assert probes.shape == (48, 32)
    terms = []
    for g in probes.T:
        a, b = other.T @ g, weight.T @ g
        cosine = float(a @ b / (a.norm() * b.norm()))
        terms.append(max(0.0, cosine) * min(a.norm(), b.norm()) / max(a.norm(), b.norm()))
    assert gfs(other, weight) == pytest.approx(float(sum(terms) / len(terms)), rel=1e-5)


def test_gfs_vectors_and_conv_kernels():
    vector = torch.tensor([1.0, 2.0, 2.0])
    assert gfs(vector, vector) == pytest.approx(1.0)
    assert gfs(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])) == 0.0  # orthogonal
    assert gfs(torch.tensor([3.0, 4.0]), torch.tensor([6.0, 8.0])) == pytest.approx(0.5)
    assert gfs(torch.zeros(4), torch.zeros(4)) == 1.0 and gfs(torch.ones(4), torch.zeros(4)) == 0.0
    kernel = torch.randn(8, 3, 2, 5, 5, generator=torch.Generator().manual_seed(1))
    assert gfs(2 * kernel, kernel) == pytest.approx(0.5, abs=1e-6)
    noisy = kernel + torch.randn(kernel.shape, generator=torch.Generator().manual_seed(2))
    assert gfs(noisy, kernel) == gfs(noisy.reshape(8, -1), kernel.reshape(8, -1))


def test_gfs_is_deterministic(weight):
    other = weight + torch.randn(weight.shape, generator=torch.Generator().manual_seed(3))
    assert gfs(other, weight) == gfs(other, weight)


def test_cmbc_identical_bridges_is_one(weight):
    basis = embedding_subspace(torch.randn(100, 48, generator=torch.Generator().manual_seed(4)))
    assert cmbc(weight, weight.clone(), basis) == pytest.approx(1.0, abs=1e-6)


def test_cmbc_hand_computed_overlap_and_capture():
    e1, e2 = torch.eye(4)[0], torch.eye(4)[1]
    right = torch.tensor([1.0, 2.0, 0.0])
    target = torch.outer(e1, right)  # rank 1, left vector e1
    source = torch.outer((e1 + e2) / math.sqrt(2), right)  # left vector at 45 degrees
    embedding = torch.outer(torch.tensor([1.0, -2.0, 0.5]), e1)  # top right singular vector e1
    basis = embedding_subspace(embedding)
    # overlap = cos^2(45) = 0.5; capture_T = 1, capture_S = 0.5 -> 0.5 * (1 - 0.5)
    assert cmbc(source, target, basis) == pytest.approx(0.25, abs=1e-6)
    assert cmbc(source, target, None) == pytest.approx(0.5, abs=1e-6)
    assert cmbc(torch.outer(e2, right), target, basis) == pytest.approx(0.0, abs=1e-6)


def test_cmbc_capture_skipped_when_widths_differ(weight):
    other = weight + 0.5 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(6))
    wrong_width = embedding_subspace(torch.randn(100, 20, generator=torch.Generator().manual_seed(7)))
    assert cmbc(other, weight, wrong_width) == cmbc(other, weight, None)
    assert 0.0 < cmbc(other, weight, None) < 1.0


def test_cmbc_zero_matrices():
    assert cmbc(torch.zeros(4, 3), torch.zeros(4, 3)) == 1.0
    assert cmbc(torch.ones(4, 3), torch.zeros(4, 3)) == 0.0


def test_sensitivity_reference_values(weight):
    assert relative_change(weight, weight) == 0.0
    assert relative_change(weight * 0.9, weight) == pytest.approx(0.1, rel=1e-5)
    assert relative_change(weight * 1.1, weight) == pytest.approx(0.1 / 1.1, rel=1e-5)  # bounded form
    assert relative_change(torch.ones(3), torch.zeros(3)) == 1.0  # zero target: bounded, not 1e8
    assert relative_change(torch.zeros(3), torch.zeros(3)) == 0.0
    assert sensitivity_variance([0.0, 0.0, 0.0], [1, 2, 3]) == 0.0  # identical models
    assert sensitivity_variance([0.1, 0.3], [1, 1]) == pytest.approx(0.25 / 1.25)  # cv = 0.1 / 0.2
    # element weights: mean = (0.1 + 3 * 0.3) / 4 = 0.25, var = (0.0225 + 3 * 0.0025) / 4 = 0.0075
    cv2 = 0.0075 / 0.25**2
    assert sensitivity_variance([0.1, 0.3], [1, 3]) == pytest.approx(cv2 / (1 + cv2))


@pytest.mark.parametrize("shape", [(20, 300), (300, 20)])
def test_top_left_subspace_matches_svd(shape):
    from cmaam.alignment.scores.cmbc import top_left_subspace

    matrix = torch.randn(shape, generator=torch.Generator().manual_seed(8))
    basis, rank = top_left_subspace(matrix, 8)
    reference = torch.linalg.svd(matrix, full_matrices=False).U[:, :8]
    assert rank == 8 and basis.shape == (shape[0], 8)
    assert float((basis.T @ reference).square().sum()) / 8 == pytest.approx(1.0, abs=1e-5)
    low_rank = torch.outer(torch.randn(shape[0]), torch.randn(shape[1]))
    assert top_left_subspace(low_rank, 8)[1] == 1  # numerical rank, not min(shape)
