"""Cheaper fitness: score candidates on a small fixed subset of informative items, the full set only for the best.

After the first generation has been scored on every item (the calibration population), a subset of
``size`` items is chosen once from its candidates x items score matrix:

- ``irt`` (as MERGE^3, ICML 2025): fit a two-parameter logistic IRT model,
  P(item i right | candidate j) = sigmoid(a_i (theta_j - b_i)), to the right/wrong responses (score >=
  ``threshold``) by joint MAP (priors theta ~ N(0, 1), b ~ N(0, 2^2), log a ~ N(0, 0.5^2), a <= e^1.5);
  keep the items of largest Fisher information sum_j a_i^2 P_ij (1 - P_ij) over the calibration abilities.
  Items everyone gets right, or wrong, or that do not separate candidates carry no information and are left out.
- ``discrimination`` (classical test theory; works for continuous item scores such as a likelihood
  tie-break): keep the items whose score correlates most with the candidate's score on the other items.
- ``random``: a seeded random subset (the baseline the other rules should beat).

A subset score is the mean item score on the subset plus a fixed offset (the calibration population's
mean full score minus its mean subset score), so it estimates the full score; CMA-ES ranks candidates,
so the offset only keeps the logged numbers comparable. Each generation's ``rescore_top`` best candidates
are scored on the full set too, and the run's best model is chosen among fully scored candidates only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from cmaam.core.config import at_least, one_of, setting
from cmaam.core.errors import CMAAMError

RULES = ("irt", "discrimination", "random")


@dataclass
class SubsetSpec:
    """How the item subset is chosen and used (the ``fitness.subset`` section of an evolve config)."""

    size: int = setting(8, check=at_least(1))
    rule: str = setting("irt", check=one_of(RULES))
    rescore_top: int = setting(1, check=at_least(1))  # candidates per generation also scored on the full set
    threshold: float = setting(0.5, check=lambda value: None if 0 < value <= 1 else "must be in (0, 1]")
    seed: int = setting(0, check=at_least(0))  # random rule, IRT initialisation


@dataclass
class IRTFit:
    """A fitted two-parameter logistic model: discrimination a, difficulty b per item, ability theta per candidate."""

    discrimination: np.ndarray
    difficulty: np.ndarray
    ability: np.ndarray

    def probability(self) -> np.ndarray:
        """P[j, i]: candidate j answers item i right."""
        return _sigmoid(self.discrimination[None, :] * (self.ability[:, None] - self.difficulty[None, :]))

    def information(self) -> np.ndarray:
        """Fisher information of each item, summed over the candidates' abilities."""
        p = self.probability()
        return (self.discrimination[None, :] ** 2 * p * (1 - p)).sum(axis=0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -35, 35)))


def fit_2pl(responses: np.ndarray, iterations: int = 2000, learning_rate: float = 0.05, seed: int = 0) -> IRTFit:
    """Joint MAP fit of a 2PL IRT model to a 0/1 ``responses`` matrix (candidates x items) by gradient ascent.

    Deterministic (numpy, fixed iterations); the priors keep items everyone gets right or wrong finite.
    """
    responses = np.asarray(responses, dtype=np.float64)
    if responses.ndim != 2 or not responses.size:
        raise CMAAMError("IRT: the response matrix must be candidates x items and not empty")
    candidates, items = responses.shape
    generator = np.random.default_rng(seed)
    ability = generator.normal(0.0, 0.01, candidates)
    difficulty = np.zeros(items)
    log_discrimination = np.zeros(items)
    for _ in range(iterations):
        discrimination = np.exp(log_discrimination)
        gap = ability[:, None] - difficulty[None, :]
        residual = responses - _sigmoid(discrimination[None, :] * gap)  # d loglik / d logit
        grad_ability = (residual * discrimination[None, :]).sum(axis=1) - ability
        grad_difficulty = -(residual * discrimination[None, :]).sum(axis=0) - difficulty / 4.0
        grad_log_a = (residual * gap).sum(axis=0) * discrimination - 4.0 * log_discrimination
        ability += learning_rate * grad_ability / max(1.0, math.sqrt(items))
        difficulty += learning_rate * grad_difficulty / max(1.0, math.sqrt(candidates))
        log_discrimination += learning_rate * grad_log_a / max(1.0, math.sqrt(candidates))
        log_discrimination = np.clip(log_discrimination, -5.0, 1.5)
    return IRTFit(np.exp(log_discrimination), difficulty, ability)


def discrimination_index(scores: np.ndarray) -> np.ndarray:
    """Per item: Pearson correlation of its score with the candidate's mean score on the other items
    (0 for an item, or a rest score, without spread)."""
    scores = np.asarray(scores, dtype=np.float64)
    items = scores.shape[1]
    total = scores.sum(axis=1)
    result = np.zeros(items)
    for i in range(items):
        rest = (total - scores[:, i]) / max(1, items - 1)
        item = scores[:, i]
        if np.ptp(item) > 0 and np.ptp(rest) > 0:
            result[i] = float(np.corrcoef(item, rest)[0, 1])
    return result


def _top(values: np.ndarray, size: int) -> list[int]:
    """Indices of the ``size`` largest values, the earliest first among equals, returned in item order."""
    order = sorted(range(len(values)), key=lambda i: (-float(values[i]), i))
    return sorted(order[:size])


@dataclass
class SubsetPlan:
    """The chosen items, the score offset, and per-item statistics (written to subset.json)."""

    items: list[int]
    rule: str
    offset: float
    total_items: int
    statistics: dict[str, list[float]] = field(default_factory=dict)

    def estimate(self, subset_score: float) -> float:
        """The full-set score estimated from a subset score."""
        return float(subset_score) + self.offset

    def to_json(self) -> dict:
        return asdict(self)


def select_subset(scores: Sequence[Sequence[float]], spec: SubsetSpec) -> SubsetPlan:
    """Choose ``spec.size`` items from the calibration population's candidates x items score matrix."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] < 2:
        raise CMAAMError("fitness.subset: the calibration needs item scores of at least two candidates")
    total = scores.shape[1]
    if spec.size >= total:
        raise CMAAMError(f"fitness.subset.size {spec.size} is not smaller than the {total} items scored")
    statistics = {"difficulty": [float(v) for v in 1.0 - scores.mean(axis=0)]}
    if spec.rule == "irt":
        fit = fit_2pl(scores >= float(spec.threshold), seed=spec.seed)
        information = fit.information()
        items = _top(information, spec.size)
        statistics.update(information=information.tolist(), irt_discrimination=fit.discrimination.tolist(),
                          irt_difficulty=fit.difficulty.tolist())
    elif spec.rule == "discrimination":
        index = discrimination_index(scores)
        items = _top(index, spec.size)
        statistics["discrimination"] = index.tolist()
    else:
        generator = np.random.default_rng(spec.seed)
        items = sorted(int(i) for i in generator.choice(total, size=spec.size, replace=False))
    offset = float(scores.mean() - scores[:, items].mean())
    return SubsetPlan(items, spec.rule, offset, total, statistics)
