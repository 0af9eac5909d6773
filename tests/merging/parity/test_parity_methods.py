"""Every registered method against mergekit's own implementation on the same random float32 tensors."""

from __future__ import annotations

import pytest
import torch

from cmaam.merging.methods import get_method, list_methods
from merging_helpers import random_models

merge_tensors = pytest.importorskip("mergekit.merge_methods", reason="mergekit is a dev dependency").merge_tensors

SHAPES = [(7,), (24, 16), (3, 8, 5)]
TOLERANCE = 1e-6

# method -> list of (our parameters, number of non-base models); mergekit gets the same values
# (``lambda_`` is mergekit's ``lambda``; ``seed`` seeds torch's global generator for mergekit).
CASES = {
    "linear": [({"weight": [0.2, 0.5, 0.3]}, 3), ({"weight": [1.0, -0.25], "normalize": False}, 2)],
    "slerp": [({"t": 0.3}, 1), ({"t": 0.0}, 1), ({"t": 1.0}, 1), ({"t": 0.77}, 1)],
    "task_arithmetic": [
        ({"weight": [0.5, 0.3, -0.4]}, 3),
        ({"weight": [0.7, 0.6], "normalize": True, "lambda_": 1.5}, 2),
    ],
    "ties": [
        ({"weight": [0.5, 0.3, 0.8], "density": [0.5, 0.7, 0.2]}, 3),
        ({"weight": [1.0, -0.5], "density": 0.3, "normalize": False, "lambda_": 0.8}, 2),
        ({"weight": [0.4, 0.6], "density": [0.6, 0.6], "rescale": True}, 2),
    ],
    "dare_linear": [
        ({"weight": [0.5, 0.3, 0.4], "density": [0.5, 0.7, 0.3], "seed": 7}, 3),
        ({"weight": [1.0, 0.5], "density": 0.9, "rescale": False, "normalize": True, "seed": 123}, 2),
    ],
    "dare_ties": [
        ({"weight": [0.5, 0.3, 0.4], "density": [0.5, 0.7, 0.3], "seed": 3}, 3),
        ({"weight": [1.0, -0.6], "density": 0.4, "lambda_": 1.3, "normalize": True, "seed": 11}, 2),
    ],
    "breadcrumbs": [
        ({"weight": [0.5, 0.3, 0.8], "density": [0.5, 0.7, 0.9], "gamma": [0.01, 0.05, 0.2]}, 3),
        ({"weight": [1.0, 1.0], "density": 0.8, "gamma": 0.3, "normalize": True}, 2),  # density + gamma > 1
    ],
    "breadcrumbs_ties": [
        ({"weight": [0.5, 0.3, 0.8], "density": [0.5, 0.7, 0.9], "gamma": [0.01, 0.05, 0.1]}, 3),
        ({"weight": [0.6, 0.4], "density": 0.5, "gamma": 0.1, "rescale": True}, 2),
    ],
    "della": [({"weight": [0.5, 0.3, 0.8], "density": [0.5, 0.6, 0.4], "epsilon": [0.1, 0.2, 0.3], "seed": 5}, 3)],
    "della_linear": [({"weight": [0.7, 0.3], "density": 0.5, "epsilon": 0.15, "seed": 9}, 2)],
    "model_stock": [({}, 2), ({}, 4), ({"filter_wise": True}, 3)],
    "passthrough": [({}, 1), ({"scale": [0.5]}, 1)],
}


def _mergekit(name, base, models, parameters):
    parameters = dict(parameters)
    if "seed" in parameters:
        torch.manual_seed(parameters.pop("seed"))
    if "lambda_" in parameters:
        parameters["lambda"] = parameters.pop("lambda_")
    if name in ("linear", "passthrough"):  # base-less methods: every input is a model
        return merge_tensors(models, name, parameters=parameters)
    return merge_tensors([base, *models], name, parameters=parameters, base_index=0)


# checked elsewhere: mergekit's newer methods (test_parity_newer_methods.py) and the subspace methods, which
# mergekit lacks, against slow references written from their papers (tests/merging/test_methods_subspace.py)
CHECKED_ELSEWHERE = {"nuslerp", "multislerp", "karcher", "sce", "nearswap", "arcee_fusion", "ram", "ramplus_tl",
                     "tsv", "iso_c", "iso_cts", "wudi"}


def test_every_registered_method_has_a_parity_case():
    assert {method.name for method in list_methods()} <= set(CASES) | CHECKED_ELSEWHERE


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_mergekit(name, shape):
    method = get_method(name)
    for case, (parameters, count) in enumerate(CASES[name]):
        base, models = random_models(shape, count, seed=case + 10 * len(shape))
        method.validate(parameters)
        ours = method(models, None if name in ("linear", "passthrough") else base, **parameters)
        reference = _mergekit(name, base, models, parameters)
        assert ours.shape == reference.shape and ours.dtype == reference.dtype
        difference = (ours - reference).abs().max().item()
        assert difference <= TOLERANCE, f"{name} case {case}: max abs diff {difference}"
        if name != "passthrough" and parameters.get("t") != 0.0:
            assert not torch.equal(ours, base), "a merge that returns the base tests nothing"


@pytest.mark.parametrize("relation", ["collinear", "scaled", "antipodal", "zero_other", "zero_base", "tiny_angle"])
def test_slerp_fallbacks_match_mergekit(relation):
    """mergekit's DOT_THRESHOLD (linear fallback) and eps (unnormalised near-zero vectors) paths."""
    generator = torch.Generator().manual_seed(1)
    v0 = torch.randn(12, 9, generator=generator)
    v1 = {
        "collinear": v0.clone(),
        "scaled": 3.0 * v0,
        "antipodal": -2.0 * v0,
        "zero_other": torch.zeros_like(v0),
        "zero_base": v0,
        "tiny_angle": v0 + 1e-3 * torch.randn(12, 9, generator=generator),
    }[relation]
    if relation == "zero_base":
        v0 = torch.zeros_like(v0)
    for t in (0.0, 0.25, 0.6, 1.0):
        ours = get_method("slerp")([v1], v0, t=t)
        reference = merge_tensors([v0, v1], "slerp", parameters={"t": t}, base_index=0)
        assert (ours - reference).abs().max().item() <= TOLERANCE
    if relation in ("scaled", "antipodal"):  # linear fallback: the plain lerp
        assert torch.allclose(get_method("slerp")([v1], v0, t=0.25), 0.75 * v0 + 0.25 * v1, atol=1e-6)


def test_slerp_keeps_norm_on_the_great_circle():
    """Hand-checkable case: orthogonal unit vectors stay on the unit circle at every t."""
    v0, v1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    for t in (0.1, 0.5, 0.9):
        merged = get_method("slerp")([v1], v0, t=t)
        angle = t * torch.pi / 2
        assert torch.allclose(merged, torch.tensor([torch.cos(torch.tensor(angle)), torch.sin(torch.tensor(angle))]),
                              atol=1e-6)


def test_ties_by_hand():
    """TIES on three 4-element task vectors, worked out by hand (density 1: no trim)."""
    base = torch.zeros(4)
    models = [torch.tensor([1.0, -2.0, 3.0, 0.0]), torch.tensor([-1.0, -1.0, 1.0, 2.0]),
              torch.tensor([2.0, 1.0, -5.0, 0.0])]
    merged = get_method("ties")(models, base, weight=[1.0, 1.0, 1.0])
    # elected signs (sum): +, -, -, + ; agreeing entries averaged by their weights
    assert torch.equal(merged, torch.tensor([1.5, -1.5, -5.0, 2.0]))
    # density 0.5 keeps the 2 largest magnitudes of each task vector first
    trimmed = get_method("ties")(models, base, weight=[1.0, 1.0, 1.0], density=0.5)
    assert torch.equal(trimmed, torch.tensor([2.0, -2.0, -5.0, 2.0]))


def test_task_arithmetic_negative_weight_negates():
    base = torch.tensor([1.0, 1.0])
    model = torch.tensor([3.0, 0.0])
    merged = get_method("task_arithmetic")([model], base, weight=[-1.0], lambda_=0.5)
    assert torch.equal(merged, torch.tensor([0.0, 1.5]))  # base - 0.5 * (model - base)


def test_magnitude_ties_at_the_cut_keep_index_order():
    """Equal magnitudes at the cut: exactly k kept, lowest indices first (documented difference)."""
    from cmaam.merging.methods.sparsify import magnitude, magnitude_outliers

    values = torch.tensor([1.0, -2.0, 2.0, 2.0, -2.0, 0.5])
    assert torch.equal(magnitude(values, 0.5), torch.tensor([0.0, -2.0, 2.0, 2.0, 0.0, 0.0]))
    # ascending magnitudes: 0.5, 1, 2, 2, 2, 2 -> drop 1 outlier (gamma) and 2 smallest, keep 3
    assert torch.equal(magnitude_outliers(values, 0.5, gamma=1 / 6),
                       torch.tensor([0.0, -2.0, 2.0, 2.0, 0.0, 0.0]))


def test_rank_window_equals_a_stable_sort_slice():
    """The kthvalue selection keeps exactly the entries a stable sort puts at positions [start, stop)."""
    from cmaam.merging.methods.sparsify import rank_window

    generator = torch.Generator().manual_seed(0)
    for count in (1, 2, 9, 1000):
        for values in (torch.randint(0, 4, (count,), generator=generator).float(), torch.zeros(count),
                       torch.randn(count, generator=generator)):
            for start, stop in ((0, count // 2), (count // 3, count), (0, 1), (count - 1, count), (1, count - 1),
                                (0, count), (2, 2)):
                expected = torch.zeros(count, dtype=torch.bool)
                expected[torch.sort(values, stable=True).indices[start:stop]] = True
                assert torch.equal(rank_window(values, start, stop), expected), (count, start, stop)
