"""Seeded random methods (dare_*, della*): reproducible bytes, seed sensitivity, and expected value."""

from __future__ import annotations

import pytest
import torch

from cmaam.merging.methods import get_method
from cmaam.merging.methods.sparsify import make_generator

RANDOM_METHODS = ["dare_linear", "dare_ties", "della", "della_linear"]
WEIGHTS = [0.5, 0.3, 0.4]
DENSITIES = [0.5, 0.7, 0.3]


def _inputs(positive: bool = False, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(32, 16, generator=generator)
    deltas = [0.1 * torch.randn(32, 16, generator=generator) for _ in WEIGHTS]
    if positive:
        deltas = [delta.abs() for delta in deltas]
    return base, deltas, [base + delta for delta in deltas]


@pytest.mark.parametrize("name", RANDOM_METHODS)
def test_same_seed_same_bytes_other_seed_differs(name):
    base, _, models = _inputs()
    merge = get_method(name)
    first = merge(models, base, weight=WEIGHTS, density=DENSITIES, seed=42)
    again = merge(models, base, weight=WEIGHTS, density=DENSITIES, seed=42)
    other = merge(models, base, weight=WEIGHTS, density=DENSITIES, seed=43)
    assert first.numpy().tobytes() == again.numpy().tobytes()
    assert first.numpy().tobytes() != other.numpy().tobytes()
    # the global RNG plays no part
    torch.manual_seed(999)
    assert torch.equal(merge(models, base, weight=WEIGHTS, density=DENSITIES, seed=42), first)


def test_drop_fraction_and_rescale():
    """A single task vector at density 0.3: about 30% of entries survive, each scaled by 1/0.3 (inverse_density)."""
    base = torch.zeros(200, 100)
    model = torch.ones(200, 100)
    merged = get_method("dare_linear")([model], base, weight=[1.0], density=[0.3], seed=0,
                                       rescale_mode="inverse_density")
    kept = merged != 0
    assert abs(kept.float().mean().item() - 0.3) < 0.01  # 20000 Bernoulli(0.3): sd 0.0032
    assert torch.allclose(merged[kept], torch.full_like(merged[kept], 1 / 0.3))
    # mergekit's L1 rescale restores the task vector's L1 norm exactly
    l1 = get_method("dare_linear")([model], base, weight=[1.0], density=[0.3], seed=0)
    assert torch.equal(l1 != 0, kept)
    assert abs(l1.abs().sum().item() - model.abs().sum().item()) < 1e-2
    for mode in ("l1", "inverse_density"):  # density 0 drops everything (no 0/0)
        dropped = get_method("dare_linear")([model], base, weight=[1.0], density=[0.0], seed=0, rescale_mode=mode)
        assert torch.equal(dropped, base)


def _mean_over_seeds(name, models, base, seeds, **parameters):
    total = torch.zeros_like(base, dtype=torch.float64)
    for seed in range(seeds):
        total += get_method(name)(models, base, weight=WEIGHTS, density=DENSITIES, seed=seed, **parameters)
    return (total / seeds).float()


@pytest.mark.parametrize("rescale_mode", ["inverse_density", "l1"])
@pytest.mark.parametrize("name,positive", [("dare_linear", False), ("dare_ties", True)])
def test_expected_value_is_the_undropped_merge(name, positive, rescale_mode):
    """Mean over 1000 seeds vs task arithmetic (no drop), every entry within 5 standard errors.

    The standard error per entry is sqrt(sum_i (w_i d_i)^2 (1 - p_i) / p_i / N). inverse_density is
    unbiased; mergekit's L1 rescale is a ratio estimator whose bias on 512 entries stays far inside
    that bound. dare_ties uses same-sign task vectors so the sign election drops nothing extra.
    """
    seeds = 1000
    base, deltas, models = _inputs(positive=positive)
    expected = get_method("task_arithmetic")(models, base, weight=WEIGHTS)
    mean = _mean_over_seeds(name, models, base, seeds, rescale_mode=rescale_mode)
    standard_error = torch.sqrt(sum((w * d) ** 2 * (1 - p) / p for w, d, p in zip(WEIGHTS, deltas, DENSITIES)) / seeds)
    assert ((mean - expected).abs() <= 5 * standard_error + 1e-6).all()
    # and a single draw is far from it (the test would pass trivially otherwise)
    single = get_method(name)(models, base, weight=WEIGHTS, density=DENSITIES, seed=0, rescale_mode=rescale_mode)
    assert (single - expected).abs().max() > 10 * (mean - expected).abs().max()


def test_generator_stream_equals_global_seed():
    """The reason parity with mergekit holds: a fresh CPU generator seeded s draws what torch.manual_seed(s) draws."""
    probabilities = torch.full((1000,), 0.4)
    torch.manual_seed(5)
    global_draw = torch.bernoulli(probabilities)
    assert torch.equal(torch.bernoulli(probabilities, generator=make_generator(5)), global_draw)
