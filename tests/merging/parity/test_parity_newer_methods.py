"""mergekit's newer methods (nuslerp, multislerp, karcher, sce, nearswap, arcee_fusion, ram, ramplus_tl) against
mergekit's own implementation on the same random float32 tensors, edge cases included."""

from __future__ import annotations

import pytest
import torch

from cmaam.core.errors import CMAAMError
from cmaam.merging.methods import get_method, list_methods
from merging_helpers import random_models

merge_methods = pytest.importorskip("mergekit.merge_methods", reason="mergekit is a dev dependency")

SHAPES = [(7,), (24, 16), (3, 8, 5)]
TOLERANCE = 1e-6
BASELESS = ("karcher",)  # mergekit's BasePolicy.IGNORED: every input is a model

# method -> list of (parameters, number of non-base models, with a base model); mergekit gets the same values.
CASES = {
    "nuslerp": [
        ({"weight": [0.3, 0.7]}, 2, True),
        ({"weight": [1.0, 3.0], "nuslerp_flatten": False}, 2, True),
        ({"weight": [0.5, 0.2], "nuslerp_flatten": False, "nuslerp_row_wise": True}, 2, True),
        ({"weight": [0.4, 0.6]}, 2, False),
        ({"weight": [0.8, 0.1], "nuslerp_flatten": False, "nuslerp_row_wise": True}, 2, False),
        ({"weight": [1.0, -1.0]}, 2, True),  # weights summing to 0: t = 0.5
    ],
    "multislerp": [
        ({"weight": [0.2, 0.5, 0.3]}, 3, True),
        ({"weight": [1.0, 2.0]}, 2, False),
        ({"weight": [0.6, 0.3, 0.4], "normalize_weights": False}, 3, False),
        ({"weight": [0.7]}, 1, True),
        ({"weight": [0.5, 0.5, 1.0, 2.0], "eps": 1e-6}, 4, True),
    ],
    "karcher": [({}, 3, False), ({"max_iter": 3, "tol": 1e-3}, 4, False), ({"max_iter": 50, "tol": 1e-9}, 2, False),
                ({}, 1, False)],
    "sce": [({}, 3, True), ({"select_topk": 0.5}, 3, True), ({"select_topk": 0.1, "int8_mask": True}, 2, True),
            ({"select_topk": 0.0}, 2, True)],
    "nearswap": [({"t": 0.05}, 1, True), ({"t": 0.001}, 1, True), ({"t": 10.0}, 1, True)],
    "arcee_fusion": [({}, 1, True)],
    "ram": [({}, 3, True), ({"epsilon": 0.08}, 3, True), ({"epsilon": 0.2}, 2, True)],
    "ramplus_tl": [({}, 3, True), ({"epsilon": 0.08, "r": 0.5, "alpha": 1.0}, 3, True),
                   ({"epsilon": 0.15, "r": 2.0, "alpha": 0.05}, 2, True)],
}


def mergekit_result(name, base, models, parameters):
    """mergekit's merge of the same tensors (base first and marked as base when used)."""
    if base is None:
        return merge_methods.merge_tensors(models, name, parameters=parameters)
    return merge_methods.merge_tensors([base, *models], name, parameters=parameters, base_index=0)


def difference(name, base, models, parameters) -> float:
    method = get_method(name)
    method.validate(parameters)
    ours = method(models, base, **parameters)
    reference = mergekit_result(name, base, models, parameters)
    assert ours.shape == reference.shape and ours.dtype == reference.dtype
    return (ours - reference).abs().max().item()


def test_every_mergekit_method_is_registered():
    """Every method of the installed mergekit has a cmaam implementation; the newer ones have cases here."""
    ours = {method.name for method in list_methods()}
    theirs = {method.spec.name for method in merge_methods.registered_methods()}
    assert theirs <= ours, sorted(theirs - ours)
    assert set(CASES) <= ours


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_mergekit(name, shape):
    for case, (parameters, count, with_base) in enumerate(CASES[name]):
        base, models = random_models(shape, count, seed=case + 10 * len(shape))
        if name in BASELESS:
            models, base = [base, *models][:count], None
        elif not with_base:
            base = None
        worst = difference(name, base, models, parameters)
        assert worst <= TOLERANCE, f"{name} case {case}: max abs diff {worst}"


@pytest.mark.parametrize("relation", ["equal", "scaled", "antipodal", "orthogonal"])
def test_nuslerp_and_multislerp_edge_geometry_matches_mergekit(relation):
    """Collinear pairs (linear fallback), antipodal two-model multislerp (weighted-sum fallback)."""
    generator = torch.Generator().manual_seed(4)
    a = torch.randn(6, 5, generator=generator)
    b = {"equal": a.clone(), "scaled": 2.5 * a, "antipodal": -a, "orthogonal": torch.zeros_like(a)}[relation]
    if relation == "orthogonal":
        a, b = torch.zeros(6, 5), torch.zeros(6, 5)
        a[0, 0], b[1, 1] = 2.0, 3.0
    for flatten in (True, False):
        assert difference("nuslerp", None, [a, b], {"weight": [0.4, 0.6], "nuslerp_flatten": flatten}) <= TOLERANCE
    assert difference("multislerp", None, [a, b], {"weight": [1.0, 1.0]}) <= TOLERANCE
    if relation == "orthogonal":  # hand check: unit-length quarter circle at t = 1/2, norms 2 and 3 -> 2.5
        merged = get_method("multislerp")([a, b], None, weight=[1.0, 1.0])
        assert torch.allclose(merged[0, 0], merged[1, 1]) and abs(merged.norm().item() - 2.5) < 1e-5


def test_multislerp_cancelling_inputs_are_a_one_line_error():
    a = torch.ones(4)
    with pytest.raises(CMAAMError, match="cancel out"):
        get_method("multislerp")([a, -a, a * 0], None, weight=[1.0, 1.0, 1.0])


def test_karcher_zero_and_tiny_inputs_match_mergekit():
    zero = torch.zeros(5, 3)
    other = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    assert difference("karcher", None, [zero, zero], {}) == 0.0
    assert difference("karcher", None, [zero, other, 2 * other], {}) <= TOLERANCE
    merged = get_method("karcher")([zero, other, 2 * other], None)
    # same direction for the valid inputs; the magnitude is the mean norm (0 + |x| + 2|x|) / 3
    assert torch.allclose(merged, other, atol=1e-6)


def test_nearswap_by_hand():
    base = torch.tensor([0.0, 0.0, 0.0, 1.0])
    model = torch.tensor([0.05, 0.2, -1.0, 1.0])
    # weight = clamp(0.1 / |diff|, 0, 1): 1, 0.5, 0.1, 1 (equal entries: diff floored at 1e-6)
    merged = get_method("nearswap")([model], base, t=0.1)
    assert torch.allclose(merged, torch.tensor([0.05, 0.1, -0.1, 1.0]))


def test_ram_by_hand():
    """Unique entries are kept whole, shared ones averaged over the models that changed them."""
    base = torch.zeros(4)
    models = [torch.tensor([1.0, 2.0, 0.0, 0.0]), torch.tensor([0.0, 4.0, 3.0, 0.0])]
    assert torch.equal(get_method("ram")(models, base), torch.tensor([1.0, 3.0, 3.0, 0.0]))
    # RAM+: model 1 shares 1 entry, owns 1 (ratio 1); model 2 likewise; boost 1 + 0.5 * min(1, 0.2) = 1.1
    assert torch.allclose(get_method("ramplus_tl")(models, base, r=0.5, alpha=0.2),
                          torch.tensor([1.1, 3.0, 3.3, 0.0]))


def test_arcee_fusion_large_tensors_are_seeded():
    """Above 1M entries the quantiles come from a seeded sample: same seed, same bytes."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(1100, 1000, generator=generator)
    model = base + 0.01 * torch.randn(1100, 1000, generator=generator)
    method = get_method("arcee_fusion")
    first, again, other = (method([model], base, seed=s) for s in (3, 3, 4))
    assert torch.equal(first, again)
    changed = (first != base).float().mean().item()
    assert 0.0 < changed < 0.5  # only the outliers of importance take the model's value
    assert not torch.equal(first, other)  # another sample, a slightly different threshold
    assert abs((other != base).float().mean().item() - changed) < 1e-3


@pytest.mark.parametrize("name,parameters,count", [("nuslerp", {"weight": [1.0]}, 1),
                                                   ("nearswap", {"t": 0.1}, 2),
                                                   ("arcee_fusion", {}, 2)])
def test_wrong_number_of_models_is_a_one_line_error(name, parameters, count):
    base, models = random_models((4, 3), count, seed=0)
    with pytest.raises(CMAAMError, match=f"{name}: needs"):
        get_method(name)(models, base, **parameters)


@pytest.mark.parametrize("name,parameter,value", [("sce", "select_topk", 1.5), ("nearswap", "t", -0.1),
                                                  ("karcher", "max_iter", -1), ("ram", "epsilon", -1e-3)])
def test_out_of_range_parameters_are_refused(name, parameter, value):
    with pytest.raises(CMAAMError, match=parameter):
        get_method(name).validate({parameter: value})
