"""AdaMMS's unsupervised coefficient search (Du et al., CVPR 2025) for a fine-tune merged into its base.

The alpha plan is rescaled to a grid of mean alphas (the shape across groups is kept, as with
``--preserve-mean``; for ``basic`` this is the linear merge at each alpha). At every grid point the
merged model answers the unlabeled inputs (greedy); between neighbouring points the number of
inputs whose (normalised) answer changes is counted. AdaMMS picks the coefficient around which the
answers change least: the interior point whose changes to both neighbours sum lowest. Ties go to the
smallest coefficient (the merge closest to the base; our rule, see docs/merge.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from tqdm.auto import tqdm

from cmaam.alignment.alphas import AlphaPlan, preserve_mean
from cmaam.core.errors import CMAAMError
from cmaam.search.adaptive import MergeSpace, UnlabeledInput, round_float

DEFAULT_GRID = tuple(round(0.1 * step, 1) for step in range(11))


@dataclass
class AdaMMSConfig:
    """The grid of mean alphas and the generation settings."""

    grid: tuple[float, ...] = DEFAULT_GRID
    batch_size: int = 32
    max_new_tokens: int = 16
    progress: bool = True

    def validate(self) -> None:
        """One-line errors: at least three distinct, increasing grid points in [0, 1]."""
        grid = list(self.grid)
        if len(grid) < 3 or any(not 0.0 <= value <= 1.0 for value in grid) or grid != sorted(set(grid)):
            raise CMAAMError(f"--adapt-grid needs at least 3 distinct increasing values in [0, 1], got {grid}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise CMAAMError("AdaMMS batch size and max new tokens must be at least 1")


def select(changes: Sequence[int]) -> tuple[int, list[int]]:
    """AdaMMS's choice from the changed-answer counts between neighbours (``changes[i]``: points i and i+1).

    Returns the chosen grid index (interior points only) and every point's score (None at the ends):
    the sum of its changes to both neighbours. Ties go to the lowest index.
    """
    if len(changes) < 2:
        raise CMAAMError("AdaMMS needs at least three grid points")
    scores = [None] + [changes[i - 1] + changes[i] for i in range(1, len(changes))] + [None]
    best = min(range(1, len(changes)), key=lambda i: (scores[i], i))
    return best, scores


@dataclass
class AdaMMSResult:
    """The grid, the changed-answer curve, the scores and the chosen point."""

    grid: list[float]
    changes: list[int]
    scores: list[int | None]
    chosen: int
    groups: list[str]
    alphas: list[float]  # the group coefficients at the chosen point
    inputs: int
    config: AdaMMSConfig = field(default_factory=AdaMMSConfig)

    @property
    def mean_alpha(self) -> float:
        return self.grid[self.chosen]

    def report(self) -> dict:
        """The JSON section for report.json."""
        return {
            "method": "adamms",
            "settings": {"grid": list(self.grid), "batch_size": self.config.batch_size,
                         "max_new_tokens": self.config.max_new_tokens, "inputs": self.inputs},
            "changed_answers": [{"from": a, "to": b, "changed": c}
                                for a, b, c in zip(self.grid, self.grid[1:], self.changes)],
            "scores": {f"{a:g}": s for a, s in zip(self.grid, self.scores) if s is not None},
            "chosen_mean_alpha": self.mean_alpha,
            "groups": {group: {"alpha": round_float(alpha)} for group, alpha in zip(self.groups, self.alphas)},
        }

    def figure(self):
        """The changed answers between neighbours and each candidate's score, the chosen point marked."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(6, 3.6))
        middles = [(a + b) / 2 for a, b in zip(self.grid, self.grid[1:])]
        axes.plot(middles, self.changes, marker="o", label="changed answers between neighbours")
        candidates = [(a, s) for a, s in zip(self.grid, self.scores) if s is not None]
        axes.plot([a for a, _ in candidates], [s for _, s in candidates], marker="s", ls="--",
                  label="score (sum over both neighbours)")
        axes.axvline(self.mean_alpha, color="tab:red", lw=1, label=f"chosen: mean alpha {self.mean_alpha:g}")
        axes.set_xlabel("mean alpha")
        axes.set_ylabel(f"answers (of {self.inputs})")
        axes.set_title("AdaMMS: answer changes along the alpha grid")
        axes.legend(fontsize=7)
        figure.tight_layout()
        return figure



def scaled_alphas(plan: AlphaPlan, groups: Sequence[str], mean_alpha: float) -> list[float]:
    """The plan's alphas rescaled (one factor, clipped) so their mean over the changed elements is ``mean_alpha``."""
    weights = plan.weights()
    changed = [group for group in groups if weights[group] > 0]
    rescaled = dict(zip(changed, preserve_mean([plan.groups[g].alpha for g in changed], [weights[g] for g in changed],
                                               mean_alpha, plan.config.alpha_min, plan.config.alpha_max)))
    return [rescaled.get(group, plan.groups[group].alpha) for group in groups]


def _normalised(completion: str, lang: str) -> str:
    from eval.vqa.normalize import normalize_answer

    return normalize_answer(completion, lang)


def adamms(space: MergeSpace, plan: AlphaPlan, inputs: Sequence[UnlabeledInput],
           config: AdaMMSConfig | None = None) -> AdaMMSResult:
    """Answer ``inputs`` at every grid point and choose the point where the answers change least."""
    config = config or AdaMMSConfig()
    config.validate()
    if not inputs:
        raise CMAAMError("AdaMMS needs at least one unlabeled input")
    generator = space.generator(config.batch_size, config.max_new_tokens)
    requests = [item.request for item in inputs]
    answers = []
    for mean_alpha in tqdm(config.grid, desc="AdaMMS", unit="point", disable=not config.progress, leave=False):
        space.load(scaled_alphas(plan, space.groups, mean_alpha))
        completions = generator.generate(requests)
        answers.append([_normalised(text, item.lang) for text, item in zip(completions, inputs)])
    space.load([0.0] * len(space.groups))  # leave the model as T
    changes = [sum(a != b for a, b in zip(first, second)) for first, second in zip(answers, answers[1:])]
    chosen, scores = select(changes)
    return AdaMMSResult(list(config.grid), changes, scores, chosen, list(space.groups),
                        scaled_alphas(plan, space.groups, config.grid[chosen]), len(inputs), config)
