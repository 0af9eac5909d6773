"""``--adapt adamerging|adamms``: the adapters ``cmaam.alignment.merge.merge_vlm`` calls to choose group alphas
from unlabeled inputs, starting from the CMAAM alpha plan."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from cmaam.alignment.alphas import AlphaPlan
from cmaam.alignment.merge import ADAPTATION_FIGURE, Adaptation, Adapter
from cmaam.alignment.report import format_table
from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.io.files import figure_png
from cmaam.io.reader import TensorNames
from cmaam.search.adamerging import AdaMergingConfig, AdaMergingResult, adamerging
from cmaam.search.adamms import DEFAULT_GRID, AdaMMSConfig, AdaMMSResult, adamms
from cmaam.search.adaptive import ADAPT_METHODS, initial_coefficients, load_merge_space, load_unlabeled


@dataclass
class AdaptOptions:
    """What ``--adapt`` needs: the method, the unlabeled inputs and the method's settings."""

    method: str
    data: str
    held_out: str | None = None  # AdaMerging: inputs never trained on, whose entropy is reported
    limit: int | None = None  # use the first N inputs of each file
    init: float | None = None  # AdaMerging: start every group here instead of at the CMAAM alphas
    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 16
    answer_tokens: int = 1
    grid: tuple[float, ...] = DEFAULT_GRID  # AdaMMS: mean alphas
    max_new_tokens: int = 16  # AdaMMS: answer length

    def validate(self) -> None:
        """One-line errors before any model is loaded."""
        if self.method not in ADAPT_METHODS:
            raise CMAAMError(f"unknown --adapt {self.method!r} (choose {', '.join(ADAPT_METHODS)})")
        for path in (self.data, self.held_out):
            if path is not None and not Path(path).is_file():
                raise CMAAMError(f"{path}: unlabeled input file not found")
        if self.init is not None and not (math.isfinite(self.init) and 0.0 <= self.init <= 1.0):
            raise CMAAMError(f"--adapt-init must be in [0, 1], got {self.init}")
        self.adamerging_config().validate()
        self.adamms_config().validate()

    def adamerging_config(self, seed: int = 0, progress: bool = True) -> AdaMergingConfig:
        return AdaMergingConfig(steps=self.steps, lr=self.lr, batch_size=self.batch_size,
                                answer_tokens=self.answer_tokens, seed=seed, progress=progress)

    def adamms_config(self, progress: bool = True) -> AdaMMSConfig:
        return AdaMMSConfig(grid=tuple(self.grid), batch_size=max(self.batch_size, 1),
                            max_new_tokens=self.max_new_tokens, progress=progress)


def adamerging_markdown(result: AdaMergingResult) -> str:
    """report.md section of an AdaMerging run."""
    settings = ", ".join(f"{key} {value}" for key, value in result.report()["settings"].items())
    groups = format_table(["group", "initial alpha", "learned alpha", "changed by the fine-tune"],
                          [[g, a, b, "yes" if c else "no (no-op)"] for g, a, b, c in
                           zip(result.groups, result.initial, result.alphas, result.changed)])
    entropy = format_table(["inputs", "count", "entropy before", "entropy after"],
                           [[name, int(values["inputs"]), values["before"], values["after"]]
                            for name, values in result.entropy.items()])
    return "\n".join(["## Adaptation: AdaMerging", "", f"Settings: {settings}.", "", groups, "", entropy, "",
                      f"![{ADAPTATION_FIGURE}]({ADAPTATION_FIGURE})", ""])


def adamms_markdown(result: AdaMMSResult) -> str:
    """report.md section of an AdaMMS search."""
    rows = [[f"{a:g} -> {b:g}", c] for a, b, c in zip(result.grid, result.grid[1:], result.changes)]
    scores = [[f"{a:g}", s] for a, s in zip(result.grid, result.scores) if s is not None]
    return "\n".join(["## Adaptation: AdaMMS", "", f"{result.inputs} unlabeled inputs; chosen mean alpha "
                      f"**{result.mean_alpha:g}**.", "", format_table(["mean alpha", "changed answers"], rows), "",
                      format_table(["candidate", "score (changes to both neighbours)"], scores), "",
                      f"![{ADAPTATION_FIGURE}]({ADAPTATION_FIGURE})", ""])


def make_adapter(options: AdaptOptions, execution: ExecutionOptions | None = None) -> Adapter:
    """The adapter for ``merge_vlm(adapt=...)``: loads the target in float32 on ``execution.device``, takes the task
    vectors from the source view the merge reads, runs the method (AdaMerging's batch order seeded by
    ``execution.seed``) and returns its choice."""
    options.validate()
    execution = execution or ExecutionOptions()

    def adapt(plan: AlphaPlan, layout, source: TensorNames, target: TensorNames) -> Adaptation:
        from cmaam.merging.executor import resolve_device

        inputs = load_unlabeled(options.data, options.limit)
        held_out = load_unlabeled(options.held_out, options.limit) if options.held_out else None
        space = load_merge_space(source, target, plan, layout, device=resolve_device(execution.device),
                                 dtype=torch.float32, trust_remote_code=execution.trust_remote_code)
        if options.method == "adamerging":
            result = adamerging(space, inputs, initial_coefficients(plan, space, options.init),
                                options.adamerging_config(execution.seed, execution.progress), held_out)
            markdown = adamerging_markdown(result)
        else:
            result = adamms(space, plan, inputs, options.adamms_config(execution.progress))
            markdown = adamms_markdown(result)
        alphas = dict(zip(result.groups, result.alphas))
        return Adaptation(options.method, alphas, result.report(), markdown, figure_png(result.figure()))

    return adapt
