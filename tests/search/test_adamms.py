"""AdaMMS: the selection rule on known curves, the search on a synthetic answer landscape, and the merge CLI."""

from __future__ import annotations

import json

import pytest

from cmaam.alignment.alphas import AlphaConfig, compute_alphas
from cmaam.alignment.layouts import ParamInfo
from cmaam.alignment.scores.analyzer import Analysis, TensorScore
from cmaam.search.adamms import AdaMMSConfig, adamms, scaled_alphas, select
from cmaam.search.adaptive import UnlabeledInput
from eval.generation import GenerationRequest


@pytest.mark.parametrize("changes, chosen, scores", [
    # changed answers between neighbours 0-1, 1-2, ...; a point's score is the sum over both neighbours
    ([5, 3, 1, 0, 2, 4], 3, [None, 8, 4, 1, 2, 6, None]),
    ([9, 0, 0, 7], 2, [None, 9, 0, 7, None]),
    ([2, 1, 1, 2], 2, [None, 3, 2, 3, None]),
    ([1, 1, 1, 1], 1, [None, 2, 2, 2, None]),  # a tie goes to the smallest coefficient
    ([0, 4], 1, [None, 4, None]),  # three points: the middle one is the only candidate
])
def test_selection_rule_on_hand_computed_curves(changes, chosen, scores):
    assert select(changes) == (chosen, scores)


class Landscape:
    """A stand-in merge space: input j answers 'a' below its switch point and 'b' from it on, where the
    coefficient is the language model group's alpha. The model under test is never a real network."""

    def __init__(self, groups, switches):
        self.groups = groups
        self.switches = switches
        self.loaded = []

    def load(self, coefficients):
        self.loaded.append(list(coefficients))

    def generator(self, batch_size, max_new_tokens):
        space = self

        class Generator:
            def generate(self, requests):
                alpha = space.loaded[-1][space.groups.index("language_model")]
                return ["b" if alpha >= switch - 1e-9 else "a" for switch in space.switches[:len(requests)]]

        return Generator()


def plan_with_two_groups():
    items = [TensorScore("l", ParamInfo("language_model", "language", 0), 300, 0.9, 0.9, None, 0.1),
             TensorScore("e", ParamInfo("shared_embedding", "embedding", None), 100, 0.9, 0.9, None, 0.1),
             TensorScore("v", ParamInfo("vision_encoder", "vision", 0), 100, 1.0, 1.0, None, 0.0, changed=False)]
    return compute_alphas(Analysis("t", {i.name: i for i in items}), AlphaConfig("component", base_alpha=0.5))


def test_adamms_picks_the_point_where_answers_change_least():
    plan = plan_with_two_groups()
    # switch points spread so that answers change a lot at low and high alpha and not at all around 0.6
    switches = [0.1] * 6 + [0.2] * 5 + [0.3] * 4 + [0.4] * 3 + [0.5] * 2 + [0.8] * 3 + [0.9] * 5
    inputs = [UnlabeledInput(str(i), GenerationRequest(text="q"), "en") for i in range(len(switches))]
    space = Landscape(list(plan.groups), switches)
    grid = tuple(round(0.1 * i, 1) for i in range(11))
    result = adamms(space, plan, inputs, AdaMMSConfig(grid=grid, progress=False))
    assert result.changes == [6, 5, 4, 3, 2, 0, 0, 3, 5, 0]
    assert result.mean_alpha == 0.6 and result.scores[6] == 0
    # the chosen merge is the plan rescaled to mean alpha 0.6 over the changed elements
    assert result.alphas == pytest.approx(scaled_alphas(plan, result.groups, 0.6))
    weights = plan.weights()
    mean = sum(a * weights[g] for g, a in zip(result.groups, result.alphas)) / sum(weights.values())
    assert mean == pytest.approx(0.6)
    assert space.loaded[-1] == [0.0] * len(plan.groups)  # the model is left as the target
    report = result.report()
    assert report["chosen_mean_alpha"] == 0.6 and report["changed_answers"][5] == {"from": 0.5, "to": 0.6, "changed": 0}


def test_scaling_keeps_the_shape_and_leaves_unchanged_groups_alone():
    plan = plan_with_two_groups()
    groups = list(plan.groups)
    base = {g: plan.groups[g].alpha for g in groups}
    scaled = dict(zip(groups, scaled_alphas(plan, groups, 0.2)))
    assert scaled["vision_encoder"] == base["vision_encoder"]  # a no-op group: not part of the budget
    ratio = scaled["language_model"] / base["language_model"]
    assert scaled["shared_embedding"] == pytest.approx(base["shared_embedding"] * ratio)


def test_adamms_through_the_merge_cli(tiny_qwen2vl_pair, tmp_path):
    from safetensors.torch import load_file

    from cmaam.merge import main
    from adaptive_helpers import vqa_file

    target, source = tiny_qwen2vl_pair
    data = vqa_file(tmp_path / "data")
    assert main(["--source", str(source), "--target", str(target), "--output", str(tmp_path / "out"), "--strategy",
                 "basic", "--no-progress", "--adapt", "adamms", "--adapt-data", str(data), "--adapt-grid",
                 "0.2,0.4,0.6,0.8", "--adapt-max-new-tokens", "3"]) == 0
    report = json.loads((tmp_path / "out/analysis/report.json").read_text())
    section = report["adaptation"]
    assert section["method"] == "adamms" and len(section["changed_answers"]) == 3
    chosen = section["chosen_mean_alpha"]
    assert chosen in (0.4, 0.6) and report["groups"]["model"]["alpha"] == pytest.approx(chosen)
    name = "model.layers.0.mlp.up_proj.weight"
    merged, t, s = (load_file(str(folder / "model.safetensors")) for folder in (tmp_path / "out", target, source))
    assert (merged[name] - ((1 - chosen) * t[name] + chosen * s[name])).abs().max() < 1e-6
    assert (tmp_path / "out/analysis/adaptation.png").is_file()
    assert "## Adaptation: AdaMMS" in (tmp_path / "out/analysis/report.md").read_text()
