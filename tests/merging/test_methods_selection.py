"""Top-k by selection (kth_smallest, rank_window): the same values and sets as torch.kthvalue and a stable sort."""

from __future__ import annotations

import pytest
import torch

from cmaam.merging.methods.sparsify import SELECTION_SAMPLE, kth_smallest, magnitude, rank_window

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
        "sorted": torch.linspace(-1, 1, LARGE),
        "periodic": periodic,
    }


@pytest.mark.parametrize("name", sorted(tensors()))
def test_kth_smallest_is_kthvalue(name):
    values = tensors()[name]
    for k in (1, 2, 1000, LARGE // 3, LARGE // 2, LARGE - 7, LARGE):
        assert kth_smallest(values, k) == torch.kthvalue(values, k).values.item(), (name, k)


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
