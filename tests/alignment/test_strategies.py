"""Strategies as registered objects: one list of names, lookup errors, new strategies usable everywhere."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from cmaam import merge
from cmaam.alignment.alphas import (
    STRATEGIES,
    STRATEGY_REGISTRY,
    AlphaConfig,
    Strategy,
    compute_alphas,
    get_strategy,
    register_strategy,
)
from cmaam.alignment.alphas.formula import alignment
from cmaam.alignment.layouts import ParamInfo
from cmaam.alignment.scores.analyzer import Analysis, TensorScore
from cmaam.core.errors import CMAAMError
from cmaam.pipeline import experiment


def score(name, component, stack, layer, numel, pda, gfs, sensitivity):
    return TensorScore(name, ParamInfo(component, stack, layer), numel, pda, gfs, None, sensitivity)


@pytest.fixture
def analysis():
    items = [score("v.0", "vision_encoder", "vision", 0, 100, 0.9, 0.8, 0.1),
             score("v.1", "vision_encoder", "vision", 1, 100, 0.5, 0.6, 0.2),
             score("l.0", "language_model", "language", 0, 300, 0.7, 0.9, 0.3),
             score("l.1", "language_model", "language", 1, 100, 0.3, 0.4, 0.3)]
    return Analysis("test", {item.name: item for item in items})


@pytest.fixture
def registry():
    """Registrations made by a test are undone after it."""
    saved = dict(STRATEGY_REGISTRY)
    yield STRATEGY_REGISTRY
    STRATEGY_REGISTRY.clear()
    STRATEGY_REGISTRY.update(saved)


def test_one_list_of_names_everywhere():
    assert list(STRATEGIES) == ["basic", "component", "layerwise", "full"]
    parser = merge.build_parser()
    choices = next(action.choices for action in parser._actions if action.dest == "strategy")
    assert list(choices) == list(STRATEGIES)
    assert experiment.STRATEGIES is STRATEGIES


def test_unknown_name_is_one_line_error_listing_the_names():
    message = "unknown strategy 'layer' (choose basic, component, layerwise, full)"
    with pytest.raises(CMAAMError) as error:
        get_strategy("layer")
    assert str(error.value) == message
    with pytest.raises(CMAAMError) as error:
        AlphaConfig("layer").validate()
    assert str(error.value) == message


def test_registering_twice_is_refused_unless_replacing(registry):
    with pytest.raises(CMAAMError, match="'basic' is already registered"):
        register_strategy(Strategy("basic", lambda info: "everything"))
    register_strategy(Strategy("basic", lambda info: "everything"), replace=True)
    assert get_strategy("basic").group_key(ParamInfo("language_model", "language", 0)) == "everything"


def test_a_registered_strategy_is_usable_in_compute_alphas_and_the_cli(registry, analysis):
    """'pairs' groups layers 2k and 2k+1 of a component, and takes A = A_component * A_group."""
    register_strategy(Strategy("pairs", lambda info: f"{info.component}.{info.layer // 2}",
                               combine=lambda component, group: component * group))
    assert "pairs" in STRATEGIES
    plan = compute_alphas(analysis, AlphaConfig("pairs", base_alpha=0.5, use_sensitivity=False))
    assert plan.tensor_group == {"v.0": "vision_encoder.0", "v.1": "vision_encoder.0",
                                 "l.0": "language_model.0", "l.1": "language_model.0"}
    weights = {"pda": 0.4, "gfs": 0.3, "cmbc": 0.3}
    a_language = alignment({"pda": (0.7 * 300 + 0.3 * 100) / 400, "gfs": (0.9 * 300 + 0.4 * 100) / 400}, weights)
    assert plan.groups["language_model.0"].component_alignment == pytest.approx(a_language, rel=1e-12)
    assert plan.groups["language_model.0"].alpha == pytest.approx(0.5 * a_language * a_language, rel=1e-12)
    with pytest.raises(SystemExit):
        merge.build_parser().parse_args(["--source", "s", "--target", "t", "--output", "o", "--strategy", "nope"])
    assert merge.build_parser().parse_args(["--source", "s", "--target", "t", "--output", "o",
                                            "--strategy", "pairs"]).strategy == "pairs"


def test_full_combines_component_and_group_alignment(analysis):
    plan = compute_alphas(analysis, AlphaConfig("full", base_alpha=1.0, use_sensitivity=False))
    weights = {"pda": 0.4, "gfs": 0.3, "cmbc": 0.3}
    a_vision = alignment({"pda": 0.7, "gfs": 0.7}, weights)
    a_group = alignment({"pda": 0.9, "gfs": 0.8}, weights)
    assert plan.groups["vision_encoder.0"].alpha == pytest.approx(math.sqrt(a_vision * a_group), rel=1e-12)
    assert plan.groups["vision_encoder.0"].component_alignment == pytest.approx(a_vision, rel=1e-12)
    assert compute_alphas(analysis, AlphaConfig("layerwise")).groups["vision.0"].component_alignment is None


def test_strategy_names_import_without_torch():
    """The layouts CLI checks strategy names before the ~2 s torch import (the in-process pipeline imports
    torch anyway, so only the light commands are held to this)."""
    code = ("import sys, cmaam.layouts; "
            "from cmaam.alignment.alphas import STRATEGIES; print(list(STRATEGIES), 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.split("] ")[-1].strip() == "False"
