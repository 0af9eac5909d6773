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


@pytest.mark.parametrize("name,values", [
    ("ties", {"weight": [1.0, -0.5], "density": [0.0, 1.0], "lambda_": -2.0}),
    ("slerp", {"t": 0.0}), ("slerp", {"t": 1.0}),
    ("breadcrumbs", {"weight": 1.0, "density": 1.0, "gamma": 0.0}),
    ("model_stock", {"filter_wise": True}), ("passthrough", {"scale": [None]}),
])
def test_validate_accepts_edges(name, values):
    get_method(name).validate(values)


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
