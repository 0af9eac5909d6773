"""Bad parameters and inputs raise CMAAMError with one clear message."""

from __future__ import annotations

import pytest
import torch

from cmaam.core.errors import CMAAMError
from cmaam.merging.methods import get_method

BASE = torch.zeros(4, 3)
MODELS = [torch.ones(4, 3), 2 * torch.ones(4, 3)]


@pytest.mark.parametrize("name,values,fragment", [
    ("ties", {"density": [1.5, 0.5]}, "density=1.5 is above 1.0"),
    ("dare_ties", {"density": -0.1}, "density=-0.1 is below 0.0"),
    ("slerp", {"t": -0.2}, "t=-0.2 is below 0.0"),
    ("slerp", {"t": 1.2}, "t=1.2 is above 1.0"),
    ("breadcrumbs", {"gamma": [-0.01, 0.1]}, "gamma=-0.01 is below 0.0"),
    ("della", {"epsilon": 0.7}, "epsilon=0.7 is above 0.5"),
    ("dare_linear", {"seed": -3}, "seed=-3 is below 0"),
    ("task_arithmetic", {"weight": [float("nan"), 1.0]}, "not a finite number"),
    ("ties", {"alpha": 0.5}, "unknown parameter 'alpha'"),
    ("slerp", {"weight": [1.0]}, "unknown parameter 'weight'"),
])
def test_validate_rejects(name, values, fragment):
    with pytest.raises(CMAAMError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        get_method(name).validate(values)


@pytest.mark.parametrize("name,models,base,values,expected", [
    # model 1 is dropped (density 0); model 2: (-0.5 * 2) / -0.5 = 2 (normalized), times lambda -2
    ("ties", MODELS, BASE, {"weight": [1.0, -0.5], "density": [0.0, 1.0], "lambda_": -2.0}, -4.0),
    ("slerp", MODELS[:1], BASE, {"t": 0.0}, 0.0),  # t = 0 is the base
    ("slerp", MODELS[:1], BASE, {"t": 1.0}, 1.0),  # t = 1 is the model
    ("breadcrumbs", MODELS[:1], BASE, {"weight": 1.0, "density": 1.0, "gamma": 0.0}, 1.0),  # nothing pruned
    ("model_stock", MODELS, BASE, {"filter_wise": True}, 1.5),  # collinear task vectors: t = 1, the models' mean
    ("passthrough", MODELS[:1], None, {"scale": [None]}, 1.0),  # no scale: the input as is
])
def test_edge_values_are_accepted_and_merge_as_computed_by_hand(name, models, base, values, expected):
    method = get_method(name)
    method.validate(values)  # raises CMAAMError if an edge value were refused
    assert torch.equal(method(models, base, **values), torch.full((4, 3), expected))


@pytest.mark.parametrize("call,fragment", [
    (lambda: get_method("ties")(MODELS, BASE, weight=[1.0, 1.0, 1.0]), "weight has 3 values for 2 model"),
    (lambda: get_method("ties")(MODELS, BASE), "missing parameter"),
    (lambda: get_method("ties")(MODELS, None, weight=[1.0, 1.0]), "base model is required"),
    (lambda: get_method("ties")([torch.ones(5, 3)], BASE, weight=[1.0]), "different shapes"),
    (lambda: get_method("slerp")(MODELS, BASE, t=0.5), "exactly 1 model"),
    (lambda: get_method("slerp")([torch.ones(4, 3)], BASE, t=[0.1, 0.9]), "one finite number"),
    (lambda: get_method("slerp")([torch.ones(4)], BASE, t=0.5), "different shapes"),
    (lambda: get_method("model_stock")(MODELS[:1], BASE), "at least 2 model"),
    (lambda: get_method("passthrough")(MODELS, None), "exactly one input"),
    (lambda: get_method("della")(MODELS, BASE, weight=1.0, density=0.2, epsilon=0.3), "density +/- epsilon"),
    (lambda: get_method("dare_ties")(MODELS, BASE, weight=1.0, density=0.5, rescale_mode="l3"), "rescale_mode"),
    (lambda: get_method("nonexistent"), "unknown merge method 'nonexistent'"),
])
def test_call_rejects(call, fragment):
    with pytest.raises(CMAAMError, match=fragment.replace("+", r"\+").replace("(", r"\(")):
        call()


def test_vocabulary_size_difference_is_refused_with_a_hint():
    with pytest.raises(CMAAMError, match="different vocabulary sizes"):
        get_method("task_arithmetic")([torch.ones(10, 4)], torch.zeros(12, 4), weight=[1.0])


def test_no_models_besides_base_returns_base():
    """As mergekit: a generalized task arithmetic merge with no contributing model is the base."""
    assert get_method("ties")([], BASE, weight=[]) is BASE
