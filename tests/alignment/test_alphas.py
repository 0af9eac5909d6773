"""Alpha formula, strategies' grouping, score weights and --preserve-mean on constructed analyses."""

from __future__ import annotations

import math

import pytest

from cmaam.alignment.alphas import AlphaConfig, alignment, compute_alphas, parse_score_weights, preserve_mean
from cmaam.core.errors import CMAAMError
from cmaam.alignment.layouts import ParamInfo
from cmaam.alignment.scores.analyzer import Analysis, TensorScore
from cmaam.alignment.scores.sensitivity import sensitivity_variance


def tensor(name, component, stack, layer, numel, pda, gfs, sensitivity, cmbc=None):
    return TensorScore(name, ParamInfo(component, stack, layer), numel, pda, gfs, cmbc, sensitivity)


@pytest.fixture
def analysis():
    items = [
        tensor("v.0.a", "vision_encoder", "vision", 0, 100, 0.9, 0.8, 0.10),
        tensor("v.0.b", "vision_encoder", "vision", 0, 300, 0.7, 0.6, 0.30),
        tensor("v.1.a", "vision_encoder", "vision", 1, 200, 0.5, 0.9, 0.20),
        tensor("bridge.out", "cross_modal_bridge", "bridge", None, 400, 0.8, 0.7, 0.25, cmbc=0.6),
        tensor("bridge.bias", "cross_modal_bridge", "bridge", None, 100, 0.4, 0.5, 0.05),
        tensor("l.0.a", "language_model", "language", 0, 500, 0.95, 0.85, 0.02),
        tensor("embed", "shared_embedding", "embedding", None, 1000, 0.99, 0.97, 0.01),
    ]
    return Analysis("test", {item.name: item for item in items})


def weighted(items, field):
    values = [(getattr(i, field), i.numel) for i in items if getattr(i, field) is not None]
    return sum(v * n for v, n in values) / sum(n for _, n in values)


def expected_alpha(items, base, weights=(0.4, 0.3, 0.3), low=0.0, high=1.0):
    pda, gfs = weighted(items, "pda"), weighted(items, "gfs")
    scores = [(pda, weights[0]), (gfs, weights[1])]
    if any(i.cmbc is not None for i in items):
        scores.append((weighted(items, "cmbc"), weights[2]))
    a = sum(s * w for s, w in scores) / sum(w for _, w in scores)
    v = sensitivity_variance([i.sensitivity for i in items], [i.numel for i in items])
    return min(max(base * a * (1 - v), low), high)


def test_basic_follows_the_formula_exactly(analysis):
    plan = compute_alphas(analysis, AlphaConfig("basic", base_alpha=0.6))
    assert list(plan.groups) == ["model"]
    items = list(analysis.tensors.values())
    assert plan.groups["model"].alpha == pytest.approx(expected_alpha(items, 0.6), rel=1e-12)
    assert set(plan.tensor_alphas.values()) == {plan.groups["model"].alpha}


def test_hand_computed_single_group():
    items = [tensor("a", "language_model", "language", 0, 1, 0.5, 0.8, 0.1),
             tensor("b", "language_model", "language", 0, 1, 0.5, 0.8, 0.3)]
    plan = compute_alphas(Analysis("t", {i.name: i for i in items}), AlphaConfig("basic", base_alpha=0.5))
    # A = (0.4 * 0.5 + 0.3 * 0.8) / 0.7 = 0.62857...; cv = 0.5 -> v = 0.2; alpha = 0.5 * A * 0.8
    assert plan.groups["model"].alignment == pytest.approx(0.44 / 0.7, rel=1e-12)
    assert plan.groups["model"].variance == pytest.approx(0.2, rel=1e-12)
    assert plan.groups["model"].alpha == pytest.approx(0.5 * 0.44 / 0.7 * 0.8, rel=1e-12)


def test_component_strategy_groups_by_component(analysis):
    plan = compute_alphas(analysis, AlphaConfig("component", base_alpha=0.5))
    assert set(plan.groups) == {"vision_encoder", "cross_modal_bridge", "language_model", "shared_embedding"}
    bridge = [i for i in analysis.tensors.values() if i.component == "cross_modal_bridge"]
    assert plan.groups["cross_modal_bridge"].scores.cmbc == 0.6  # only the output matrix has CMBC
    assert plan.groups["cross_modal_bridge"].alpha == pytest.approx(expected_alpha(bridge, 0.5), rel=1e-12)
    assert plan.groups["language_model"].variance == 0.0  # one tensor: no variation


def test_layerwise_separates_vision_blocks_from_llm_layers(analysis):
    plan = compute_alphas(analysis, AlphaConfig("layerwise", base_alpha=0.5))
    assert plan.tensor_group["v.0.a"] == plan.tensor_group["v.0.b"] != plan.tensor_group["l.0.a"]
    assert plan.tensor_group["v.1.a"] != plan.tensor_group["v.0.a"]
    assert plan.tensor_group["bridge.out"] == "cross_modal_bridge" and plan.tensor_group["embed"] == "shared_embedding"
    block0 = [analysis.tensors["v.0.a"], analysis.tensors["v.0.b"]]
    assert plan.alpha("v.0.b") == pytest.approx(expected_alpha(block0, 0.5), rel=1e-12)


def test_full_uses_sqrt_of_component_and_group_alignment(analysis):
    plan = compute_alphas(analysis, AlphaConfig("full", base_alpha=0.5))
    vision = [i for i in analysis.tensors.values() if i.component == "vision_encoder"]
    block1 = [analysis.tensors["v.1.a"]]
    a_component = (0.4 * weighted(vision, "pda") + 0.3 * weighted(vision, "gfs")) / 0.7
    a_group = (0.4 * 0.5 + 0.3 * 0.9) / 0.7
    group = plan.groups[plan.tensor_group["v.1.a"]]
    assert group.component_alignment == pytest.approx(a_component, rel=1e-12)
    assert group.alignment == pytest.approx(math.sqrt(a_component * a_group), rel=1e-12)
    assert group.alpha == pytest.approx(0.5 * math.sqrt(a_component * a_group), rel=1e-12)  # v = 0 (1 tensor)
    assert block1[0].name in plan.tensor_group


def test_clipping_to_alpha_range(analysis):
    plan = compute_alphas(analysis, AlphaConfig("component", base_alpha=1.0, alpha_min=0.45, alpha_max=0.5))
    assert all(0.45 <= g.alpha <= 0.5 for g in plan.groups.values())
    assert plan.groups["shared_embedding"].alpha == 0.5


@pytest.mark.parametrize("strategy", ["component", "layerwise", "full"])
def test_preserve_mean_gives_base_alpha_as_the_weighted_mean(analysis, strategy):
    plan = compute_alphas(analysis, AlphaConfig(strategy, base_alpha=0.4, preserve_mean=True))
    assert plan.mean_alpha == pytest.approx(0.4, abs=1e-9)
    unscaled = compute_alphas(analysis, AlphaConfig(strategy, base_alpha=0.4))
    ratios = {round(plan.groups[k].alpha / unscaled.groups[k].alpha, 9) for k in plan.groups}
    assert len(ratios) == 1  # one common factor keeps the shape


def test_preserve_mean_with_clipping_still_hits_the_mean():
    alphas = preserve_mean([0.1, 0.5, 0.9], [1, 1, 1], base_alpha=0.8, alpha_max=1.0)
    assert sum(alphas) / 3 == pytest.approx(0.8, abs=1e-9)
    assert max(alphas) == 1.0
    assert preserve_mean([0.0, 0.0], [1, 3], 0.3) == [0.3, 0.3]
    # a mean that [alpha_min, alpha_max] cannot reach: the alphas end at the bound
    assert preserve_mean([0.1, 0.2], [1, 1], base_alpha=0.9, alpha_max=0.5) == [0.5, 0.5]


def test_score_weights_parse_and_renormalise():
    assert parse_score_weights(None) == {"pda": 0.4, "gfs": 0.3, "cmbc": 0.3}
    assert parse_score_weights("pda=1, gfs=0") == {"pda": 1.0, "gfs": 0.0, "cmbc": 0.3}
    assert alignment({"pda": 0.5, "gfs": 0.9, "cmbc": None}, {"pda": 0.4, "gfs": 0.3, "cmbc": 0.3}) == pytest.approx(
        (0.4 * 0.5 + 0.3 * 0.9) / 0.7)
    assert alignment({"pda": 0.5, "gfs": 0.9, "cmbc": 0.2}, {"pda": 0.0, "gfs": 0.0, "cmbc": 0.0}) == 1.0
    for bad in ("pda=x", "foo=1", "gfs=-1"):
        with pytest.raises(CMAAMError):
            parse_score_weights(bad)


def test_weights_override_and_no_sensitivity_give_base_alpha(analysis):
    config = AlphaConfig("layerwise", base_alpha=0.35, score_weights=parse_score_weights("pda=0,gfs=0,cmbc=0"),
                         use_sensitivity=False)
    assert set(compute_alphas(analysis, config).tensor_alphas.values()) == {0.35}


@pytest.mark.parametrize("kwargs", [dict(base_alpha=1.5), dict(base_alpha=-0.1), dict(alpha_min=0.6, alpha_max=0.5),
                                    dict(strategy="perlayer"), dict(base_alpha=float("nan"))])
def test_bad_alpha_config(analysis, kwargs):
    with pytest.raises(CMAAMError):
        compute_alphas(analysis, AlphaConfig(**kwargs))


def unchanged(name, component, stack, layer, numel):
    """A tensor the fine-tune left bit-identical: r = 0, PDA = GFS = 1."""
    return TensorScore(name, ParamInfo(component, stack, layer), numel, 1.0, 1.0, None, 0.0, changed=False)


def test_unchanged_tensors_do_not_enter_a_groups_alignment_or_variance():
    changed = [tensor("a", "language_model", "language", 0, 100, 0.5, 0.8, 0.1),
               tensor("b", "language_model", "language", 0, 300, 0.7, 0.6, 0.3)]
    frozen = [unchanged("c", "language_model", "language", 0, 1000), unchanged("d", "vision_encoder", "vision", 0, 600)]
    plan = compute_alphas(Analysis("t", {i.name: i for i in changed + frozen}), AlphaConfig("basic", base_alpha=0.5))
    group = plan.groups["model"]
    assert group.alpha == pytest.approx(expected_alpha(changed, 0.5), rel=1e-12)
    assert group.variance == pytest.approx(sensitivity_variance([0.1, 0.3], [100, 300]), rel=1e-12)
    assert (group.scores.numel, group.scores.changed_numel, group.scores.unchanged_tensors) == (2000, 400, 2)
    # counting the frozen tensors (the old definition) would have pulled the alpha far down
    assert expected_alpha(changed + frozen, 0.5) < 0.5 * group.alpha


def test_a_group_the_finetune_left_unchanged_keeps_base_alpha_and_no_budget():
    items = [tensor("l.a", "language_model", "language", 0, 100, 0.5, 0.8, 0.1),
             tensor("l.b", "language_model", "language", 0, 300, 0.7, 0.6, 0.3),
             unchanged("v.a", "vision_encoder", "vision", 0, 5000)]
    analysis = Analysis("t", {i.name: i for i in items})
    plan = compute_alphas(analysis, AlphaConfig("component", base_alpha=0.4))
    vision, language = plan.groups["vision_encoder"], plan.groups["language_model"]
    assert not vision.scores.changed and vision.scores.pda is None and vision.alignment == 1.0
    assert vision.alpha == 0.4 and vision.to_dict()["changed"] is False
    assert plan.mean_alpha == pytest.approx(language.alpha, rel=1e-12)  # 5000 no-op elements carry no weight
    preserved = compute_alphas(analysis, AlphaConfig("component", base_alpha=0.4, preserve_mean=True))
    assert preserved.groups["language_model"].alpha == pytest.approx(0.4, rel=1e-12)
    assert preserved.groups["vision_encoder"].alpha == 0.4 and preserved.mean_alpha == pytest.approx(0.4, rel=1e-12)


def test_identical_models_give_base_alpha_everywhere():
    items = [unchanged("a", "language_model", "language", 0, 10), unchanged("b", "vision_encoder", "vision", 0, 20)]
    plan = compute_alphas(Analysis("t", {i.name: i for i in items}), AlphaConfig("full", base_alpha=0.3))
    assert {g.alpha for g in plan.groups.values()} == {0.3} and plan.mean_alpha == pytest.approx(0.3)
