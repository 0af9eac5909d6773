"""The alpha plan: scores aggregated per group of the chosen strategy, mixed into A_g, through the formula."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cmaam.alignment.alphas.formula import DEFAULT_SCORE_WEIGHTS, alignment, alpha_value, preserve_mean
from cmaam.alignment.alphas.strategies import get_strategy
from cmaam.alignment.scores.analyzer import SCORE_NAMES, Analysis, GroupScore, TensorScore, aggregate
from cmaam.core.errors import CMAAMError


@dataclass
class AlphaConfig:
    """How alphas are computed from the scores."""

    strategy: str = "basic"
    base_alpha: float = 0.5
    alpha_min: float = 0.0
    alpha_max: float = 1.0
    score_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SCORE_WEIGHTS))
    preserve_mean: bool = False
    use_sensitivity: bool = True

    def validate(self) -> None:
        """One-line errors for values outside their ranges."""
        get_strategy(self.strategy)
        for name in ("base_alpha", "alpha_min", "alpha_max"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 <= value <= 1.0):
                raise CMAAMError(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
        if self.alpha_min > self.alpha_max:
            raise CMAAMError(f"--alpha-min {self.alpha_min} is above --alpha-max {self.alpha_max}")
        unknown = set(self.score_weights) - set(SCORE_NAMES)
        if unknown:
            raise CMAAMError(f"unknown score(s) {', '.join(sorted(unknown))} (known: {', '.join(SCORE_NAMES)})")


@dataclass
class GroupAlpha:
    """A group's aggregated scores, its alignment A_g and its alpha."""

    scores: GroupScore
    alignment: float
    variance: float
    alpha: float
    component_alignment: float | None = None  # strategies that combine it (full): A = sqrt(A_component * A_group)

    def to_dict(self) -> dict:
        data = dict(vars(self.scores))
        data.update(changed=self.scores.changed, alignment=self.alignment, variance_used=self.variance,
                    alpha=self.alpha)
        if self.component_alignment is not None:
            data["component_alignment"] = self.component_alignment
        return data


@dataclass
class AlphaPlan:
    """Alpha of every group and every scored tensor."""

    config: AlphaConfig
    groups: dict[str, GroupAlpha]
    tensor_group: dict[str, str]

    def alpha(self, name: str) -> float:
        """Alpha of one scored tensor."""
        return self.groups[self.tensor_group[name]].alpha

    @property
    def tensor_alphas(self) -> dict[str, float]:
        return {name: self.alpha(name) for name in self.tensor_group}

    def weights(self) -> dict[str, int]:
        """Weight of each group in mean alphas: its changed elements (all its elements when nothing changed)."""
        changed = {key: group.scores.changed_numel for key, group in self.groups.items()}
        if any(changed.values()):
            return changed
        return {key: group.scores.numel for key, group in self.groups.items()}

    @property
    def mean_alpha(self) -> float:
        """Element-weighted mean alpha over the tensors the fine-tune changed (merging the others is a no-op)."""
        weights = self.weights()
        total = sum(weights.values())
        return sum(self.groups[key].alpha * weight for key, weight in weights.items()) / total if total else 0.0


def group_key(strategy: str, score: TensorScore) -> str:
    """The group a tensor belongs to under ``strategy`` (vision block k and LLM layer k are different groups)."""
    return get_strategy(strategy).group_key(score.info)


def _scores(group: GroupScore) -> dict[str, float | None]:
    return {name: group.score(name) for name in SCORE_NAMES}


def compute_alphas(analysis: Analysis, config: AlphaConfig) -> AlphaPlan:
    """Group the scored tensors, mix scores into A_g, apply the formula, optionally preserve the mean."""
    config.validate()
    strategy = get_strategy(config.strategy)
    scores = list(analysis.tensors.values())
    members = {score.name: strategy.group_key(score.info) for score in scores}
    groups = aggregate(scores, lambda score: members[score.name])
    components = aggregate(scores, lambda score: score.component) if strategy.combine else {}
    group_component = {members[score.name]: score.component for score in scores}
    plan_groups = {}
    for key, group in groups.items():
        a_group = alignment(_scores(group), config.score_weights)
        a_component = None
        if strategy.combine is not None:
            a_component = alignment(_scores(components[group_component[key]]), config.score_weights)
            a_group = strategy.combine(a_component, a_group)
        variance = group.sensitivity_variance if config.use_sensitivity else 0.0
        alpha = alpha_value(config.base_alpha, a_group, variance, config.alpha_min, config.alpha_max)
        plan_groups[key] = GroupAlpha(group, a_group, variance, alpha, a_component)
    plan = AlphaPlan(config, plan_groups, members)
    if config.preserve_mean and plan_groups:
        # only groups the fine-tune changed share the budget; the others are no-ops at any alpha
        weights = plan.weights()
        keys = [key for key, weight in weights.items() if weight > 0]
        rescaled = preserve_mean([plan_groups[k].alpha for k in keys], [weights[k] for k in keys],
                                 config.base_alpha, config.alpha_min, config.alpha_max)
        for key, value in zip(keys, rescaled):
            plan_groups[key].alpha = value
    return plan
