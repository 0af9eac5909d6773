"""Top-k by selection (kth_smallest, top_cut, rank_window): the same values and sets as torch.kthvalue and a stable
sort; the two-step TIES paths (fused kernel, cache-sized chunks) equal to the whole-tensor one."""

from __future__ import annotations

import math

import pytest
import torch

from cmaam.merging.methods import generalized as generalized_module
from cmaam.merging.methods import sparsify as sparsify_module
from cmaam.merging.methods.generalized import (FUSED_MAX_MODELS, MERGE_CHUNK, consensus_mask,
                                               generalized_task_arithmetic)
from cmaam.merging.methods.sparsify import (SELECTION_SAMPLE, DeltaMagnitudes, count_below_equal, kth_smallest,
                                            kth_smallest_counted, magnitude, nth_true_position, rank_window, sparsify,
                                            top_cut, true_positions)

LARGE = 5 * SELECTION_SAMPLE  # past the size where the sample brackets the value


def stable_window(values: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    mask = torch.zeros(values.numel(), dtype=torch.bool)
    mask[torch.sort(values, stable=True).indices[start:stop]] = True
    return mask


def tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    periodic = torch.randn(LARGE, generator=generator).abs() + 10  # every sampled entry small: the bracket misses
    periodic[::LARGE // SELECTION_SAMPLE] = -torch.rand(SELECTION_SAMPLE + 1, generator=generator)[:periodic[
        ::LARGE // SELECTION_SAMPLE].numel()]
    return {
        "gaussian": torch.randn(LARGE, generator=generator),
        "few values": torch.randint(0, 7, (LARGE,), generator=generator).float(),  # many ties at every cut
        "bf16 task vector": ((torch.randn(LARGE, generator=generator) * 0.02).bfloat16().float()
                             - (torch.randn(LARGE, generator=generator) * 0.02).bfloat16().float()).abs(),
        "sorted": torch.linspace(-1, 1, LARGE),
        "periodic": periodic,
    }


@pytest.mark.parametrize("name", sorted(tensors()))
def test_kth_smallest_is_kthvalue(name):
    values = tensors()[name]
    for k in (1, 2, 1000, LARGE // 3, LARGE // 2, LARGE - 7, LARGE):
        assert kth_smallest(values, k) == torch.kthvalue(values, k).values.item(), (name, k)


@pytest.mark.parametrize("name", sorted(tensors()))
def test_kth_smallest_counts_the_entries_below_and_equal(name):
    values = tensors()[name]
    for k in (1, LARGE // 3, LARGE // 2, LARGE):
        value, below, equal = kth_smallest_counted(values, k)
        assert value == torch.kthvalue(values, k).values.item()
        assert (below, equal) == (int((values < value).sum()), int((values == value).sum())), (name, k)


@pytest.mark.parametrize("name", sorted(tensors()))
def test_top_cut_keeps_the_stable_sort_top_in_any_slice(name):
    values = tensors()[name]
    for keep in (1, 1000, LARGE // 2, LARGE - 3, LARGE):
        expected = stable_window(-values, 0, keep)
        cut = top_cut(values, keep)
        assert torch.equal(cut.mask(values), expected), (name, keep)
        for start, stop in ((0, 1000), (LARGE // 3, LARGE // 2 + 17), (LARGE - 5, LARGE)):
            assert torch.equal(cut.mask(values[start:stop], start), expected[start:stop]), (name, keep, start)


@pytest.mark.parametrize("name", sorted(tensors()))
def test_zero_dropped_keeps_exactly_the_cut_entries_in_any_slice(name):
    """The in-place cut (fused hardshrink in float32, a mask otherwise) keeps what the cut's mask keeps."""
    values = tensors()[name] - tensors()[name].median()  # signed deltas
    for keep in (1, LARGE // 2, LARGE - 3):
        cut = top_cut(values.abs(), keep)
        for dtype in (torch.float32, torch.bfloat16):
            deltas = values.to(dtype)
            cut_here = cut if dtype == torch.float32 else top_cut(deltas.abs().float(), keep)
            for start, stop in ((0, LARGE), (0, 1000), (LARGE // 3, LARGE // 2 + 17), (LARGE - 5, LARGE)):
                piece = deltas[start:stop].clone()
                expected = deltas[start:stop] * cut_here.mask(deltas[start:stop].abs().float(), start).to(dtype)
                assert torch.equal(cut_here.zero_dropped_(piece, start), expected), (name, keep, dtype, start)


@pytest.mark.parametrize("exact_limit", [1 << 24, 100])
def test_count_below_equal_counts_as_bool_masks(monkeypatch, exact_limit):
    monkeypatch.setattr(sparsify_module, "EXACT_FLOAT_COUNT", exact_limit)
    for values in tensors().values():
        for value in (values[17].item(), float(values.median()), -1e9):
            assert count_below_equal(values, value) == (int((values < value).sum()), int((values == value).sum()))


def test_consensus_mask_matches_the_elected_sign_and_never_a_zero():
    deltas = torch.tensor([[1.0, -2.0, 0.0, 3.0, -0.0, 1.0, 1.0], [-1.0, 1.0, 0.0, -0.0, -0.0, -1.0, -1.0],
                           [0.5, 0.5, 0.0, 0.0, 0.0, -1.0, 0.0]])  # the last column: a tie, elected +
    assert consensus_mask(deltas, "sum").tolist() == [[True, True, False, True, False, False, True],
                                                     [False, False, False, False, False, True, False],
                                                     [True, False, False, False, False, True, False]]
    assert consensus_mask(deltas, "count")[:, 1].tolist() == [False, True, True]  # two + against one -
    assert consensus_mask(deltas, "count")[:, 6].tolist() == [True, False, False]


def test_nth_true_position_is_nonzero():
    generator = torch.Generator().manual_seed(5)
    for size, density in ((10, 0.5), (1 << 16, 0.01), (3 * (1 << 16) + 11, 0.3), (200_000, 0.9)):
        mask = torch.rand(size, generator=generator) < density
        positions = torch.nonzero(mask).flatten()
        for n in {1, len(positions) // 2 + 1, len(positions)} - {0}:
            assert nth_true_position(mask, n) == int(positions[n - 1]), (size, n)
        found = true_positions(mask.view(-1, 1) if size % 2 else mask)  # any shape: flat positions
        assert found.dtype == torch.int64 and torch.equal(found, positions)
    assert true_positions(torch.zeros(7, dtype=torch.bool)).numel() == 0


def stacked_ties(models: list[torch.Tensor], base: torch.Tensor, weights: list[float], densities: list[float],
                 consensus: str | None, lambda_: float) -> torch.Tensor:
    """mergekit's generalized task arithmetic written plainly on stacked whole tensors (the reference)."""
    deltas = torch.stack([sparsify(model - base, density, "magnitude") if 0 < density < 1
                          else (model - base) * density for model, density in zip(models, densities)])
    deltas *= torch.tensor(weights).view(-1, 1, 1)
    column = torch.tensor(weights).view(-1, 1, 1).expand_as(deltas)
    if consensus:
        total = deltas.sum(0) if consensus == "sum" else deltas.sign().sum(0)
        keep = deltas.sign() == torch.where(total >= 0, 1.0, -1.0)
        mixed, divisor = (deltas * keep).sum(0), (column * keep).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed, divisor = deltas.sum(0), column.sum(0)
    return base + mixed / divisor * lambda_


@pytest.fixture
def fused_calls(monkeypatch) -> list[int]:
    """How many models each call of the fused TIES kernel merged (to show which path a test took)."""
    from cmaam.merging.methods import fused
    calls, kernel = [], fused.ties_sum
    monkeypatch.setattr(fused, "ties_sum", lambda models, *rest: calls.append(len(models)) or kernel(models, *rest))
    return calls


@pytest.mark.parametrize("consensus,count", [("sum", 1), ("sum", 2), ("sum", 3), ("sum", 4), ("sum", 5),
                                             ("count", 3), (None, 3)])
def test_chunked_ties_equals_the_whole_tensor_computation_bit_for_bit(consensus, count, fused_calls):
    """The two-step path (one top-k cut per model, then the fused kernel for the sum consensus of up to four
    models, else cache-sized chunks) against the plain stacked computation."""
    generator = torch.Generator().manual_seed(7 + count)
    shape = (3, MERGE_CHUNK + 1234)  # more than one chunk, the last one short
    base = torch.randn(shape, generator=generator).bfloat16().float()
    models = [(base + torch.randn(shape, generator=generator) * 0.01).bfloat16().float() for _ in range(count)]
    weights, densities = ([0.5, 1.0, -0.3, 0.7, 0.2] * 2)[:count], ([0.3, 1.0, 0.0, 0.6, 0.45] * 2)[:count]
    merged = generalized_task_arithmetic(models, base, weight=weights, density=densities, normalize=True,
                                         lambda_=0.8, sparsification="magnitude", consensus=consensus)
    assert torch.equal(merged, stacked_ties(models, base, weights, densities, consensus, 0.8))
    assert fused_calls == ([count] if consensus == "sum" and count <= FUSED_MAX_MODELS else [])


def test_fused_ties_equals_the_chunked_torch_path_with_nonfinite_entries_and_cut_ties(monkeypatch, fused_calls):
    """NaN, opposed infinities and magnitudes equal to the cut across the tensor give the same bits either way
    (the torch path taken by allowing no model in the kernel)."""
    generator = torch.Generator().manual_seed(11)
    size = 6 * SELECTION_SAMPLE + 77
    base = torch.randn(size, generator=generator).bfloat16().float()
    signs = torch.randint(0, 2, (size,), generator=generator) * 2 - 1  # the models agree: each kept delta counts
    models = [base + signs * steps / 64 for steps in (1, 2, torch.randint(0, 3, (size,), generator=generator))]
    # every magnitude of the first two models ties with their cuts
    models[0][5], models[1][9], models[0][13], models[1][13] = math.nan, math.inf, math.inf, -math.inf
    models[2][21], base[22] = -math.inf, math.inf
    settings = dict(weight=[0.3, 0.6, 0.9], density=[0.4, 0.7, 1.0], normalize=True, lambda_=1.3,
                    sparsification="magnitude", consensus="sum")
    fused = generalized_task_arithmetic(models, base, **settings)
    monkeypatch.setattr(generalized_module, "FUSED_MAX_MODELS", 0)
    chunked = generalized_task_arithmetic(models, base, **settings)
    assert fused_calls == [3]
    assert fused.isnan().sum() >= 2 and fused[13].isinf()  # opposed infinities: a NaN vote elects its sign bit
    torch.testing.assert_close(fused, chunked, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("base_dtype", [torch.bfloat16, torch.float32])
def test_fused_ties_reads_bfloat16_as_stored_with_the_float32_result(base_dtype, fused_calls, monkeypatch):
    """bfloat16 inputs given as stored (base in either dtype) merge to the bits of their float32 conversions;
    with a float16 model all are converted to float32 first (the kernels read float32 and bfloat16 only)."""
    from cmaam.merging.methods import fused
    seen = []
    kernel = fused._ties_sum
    monkeypatch.setattr(fused, "_ties_sum", lambda models, base, *rest: seen.append(
        (models[0].dtype, base.dtype)) or kernel(models, base, *rest))
    generator = torch.Generator().manual_seed(17)
    size = 5 * SELECTION_SAMPLE + 3
    base = torch.randn(size, generator=generator).to(base_dtype)
    models = [(base.float() + torch.randn(size, generator=generator) * 0.02).bfloat16() for _ in range(3)]
    settings = dict(weight=[0.4, 0.8, -0.5], density=[0.3, 0.6, 0.9], normalize=True, lambda_=0.9,
                    sparsification="magnitude", consensus="sum")
    stored = generalized_task_arithmetic(models, base, **settings)
    converted = generalized_task_arithmetic([model.float() for model in models], base.float(), **settings)
    assert stored.dtype == torch.float32 and torch.equal(stored, converted)
    assert seen[0] == ("uint16", "uint16" if base_dtype == torch.bfloat16 else "uint32") and seen[1][0] == "uint32"
    halves = generalized_task_arithmetic([models[0].half(), *models[1:]], base, **settings)
    assert torch.equal(halves, generalized_task_arithmetic([models[0].half().float(), *(m.float() for m in models[1:])],
                                                           base.float(), **settings))
    assert fused_calls == [3, 3, 3, 3] and seen[2][0] == "uint32"


@pytest.mark.parametrize("fused", [False, True])
def test_delta_magnitudes_count_and_find_equal_values(fused):
    from cmaam.merging.methods.fused import FusedDeltaMagnitudes
    generator = torch.Generator().manual_seed(13)
    size = 3 * MERGE_CHUNK + 999
    base = torch.randint(-8, 8, (size,), generator=generator).float() / 4
    model = base + torch.randint(-3, 4, (size,), generator=generator).float() / 4
    magnitudes = FusedDeltaMagnitudes(model, base) if fused else DeltaMagnitudes(model, base, MERGE_CHUNK)
    plain = (model - base).abs()
    for value in (0.0, 0.25, 0.5, 0.6):
        assert magnitudes.count_below_equal(value) == (int((plain < value).sum()), int((plain == value).sum()))
    positions = torch.nonzero(plain == 0.5).flatten()
    for n in (1, 2, len(positions) // 3, len(positions)):
        assert magnitudes.equal_position(0.5, n) == int(positions[n - 1]), n
    with pytest.raises(RuntimeError, match="fewer than"):
        magnitudes.equal_position(0.5, len(positions) + 1)


@pytest.mark.parametrize("name", sorted(tensors()))
def test_rank_window_is_the_stable_sort_window(name):
    values = tensors()[name]
    for start, stop in ((0, LARGE // 2), (LARGE // 10, LARGE - LARGE // 10), (LARGE // 3, LARGE), (0, LARGE),
                        (5, 6)):
        assert torch.equal(rank_window(values, start, stop), stable_window(values, start, stop)), (name, start, stop)


def test_magnitude_keeps_the_largest_entries_as_a_sort_would():
    values = torch.randint(-50, 50, (LARGE,), generator=torch.Generator().manual_seed(3)).float()
    kept = magnitude(values, 0.3)
    keep = int(0.3 * LARGE)
    reference = stable_window(-values.abs(), 0, keep)
    assert torch.equal(kept, values * reference.to(values.dtype))
    assert int(torch.count_nonzero(kept)) <= keep
