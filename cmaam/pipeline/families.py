"""The method families an experiment compares, each a curve of merges of one (base, fine-tune) pair.

- ``linear``: (1 - a) T + a S over a grid of a (a = 0 is the base and a = 1 the fine-tune, exactly).
- task-vector methods through the mergekit runner (``task_arithmetic``, ``ties``, ``dare_linear``, ...):
  T + lambda * f(S - T), the base as mergekit's base model, over a grid of lambda.
- ``cmaam_<strategy>_pm``: CMAAM with ``--preserve-mean`` at the same mean alphas as the linear grid.
- ``cmaam``: the plain CMAAM merges (one per strategy at base_alpha).
- ``adamerging`` / ``adamms``: the label-free adaptive coefficients, one merge per configured strategy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmaam.core.config import InvalidValue, at_least, between, each, one_of, setting
from cmaam.io.atomic import atomic_write_text

ADAPT_METHODS = ("adamerging", "adamms")
DEFAULT_ADAPT_GRID = [round(0.1 * step, 1) for step in range(11)]


@dataclass
class TaskVectorMethod:
    """One task-vector family: a mergekit method over the fine-tune's task vector at several lambdas."""

    method: str = "ties"  # a registered merge method that takes a base model (task_arithmetic, ties, dare_linear, ...)
    weights: list[float] = setting(default_factory=lambda: [0.5, 1.0], check=each(between(0, 10)))  # lambda values
    density: float | None = setting(None, check=between(0, 1))  # kept fraction (ties, dare_*); None: the method's
    family: str | None = None  # the family's name (default: the method)

    @property
    def name(self) -> str:
        return self.family or self.method

    def validate(self) -> None:
        from cmaam.core.errors import CMAAMError
        from cmaam.merging.methods import get_method

        try:
            method = get_method(self.method)
        except CMAAMError as error:
            raise InvalidValue("method", str(error)) from None
        if not method.requires_base:
            raise InvalidValue("method", f"{self.method} takes no base model: not a task-vector method")
        if not self.weights:
            raise InvalidValue("weights", "give at least one lambda")

    def config(self, base: str | Path, source: str | Path, weight: float) -> dict:
        """The mergekit config of one point: T + lambda * f(S - T) (dtype float32, as the models are stored)."""
        parameters: dict[str, Any] = {"weight": 1.0}
        if self.density is not None:
            parameters["density"] = self.density
        return {"merge_method": self.method, "base_model": str(base),
                "models": [{"model": str(source), "parameters": parameters}],
                "parameters": {"lambda": weight}, "dtype": "float32"}


@dataclass
class AdaptRun:
    """One adaptive merge: the method, the CMAAM strategy it starts from, and the method's settings."""

    method: str = setting("adamerging", check=one_of(ADAPT_METHODS))
    strategy: str = "full"
    steps: int = setting(100, check=at_least(1))  # AdaMerging
    lr: float = setting(1e-2, check=between(1e-6, 1))  # AdaMerging
    batch_size: int = setting(16, check=at_least(1))
    answer_tokens: int = setting(1, check=at_least(1))  # AdaMerging
    grid: list[float] = setting(default_factory=lambda: list(DEFAULT_ADAPT_GRID), check=each(between(0, 1)))  # AdaMMS
    max_new_tokens: int = setting(20, check=at_least(1))  # AdaMMS

    @property
    def name(self) -> str:
        return f"{self.method}_{self.strategy}"

    def validate(self) -> None:
        from cmaam.alignment.alphas import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise InvalidValue("strategy", f"unknown {self.strategy!r} (choose {', '.join(STRATEGIES)})")

    def options(self, data: Path, held_out: Path | None):
        """The ``AdaptOptions`` of this run (its seed is the experiment's, through the execution options)."""
        from cmaam.search.adapt import AdaptOptions

        return AdaptOptions(method=self.method, data=str(data), held_out=str(held_out) if held_out else None,
                            steps=self.steps, lr=self.lr, batch_size=self.batch_size,
                            answer_tokens=self.answer_tokens, grid=tuple(self.grid),
                            max_new_tokens=self.max_new_tokens)


KINDS = ("endpoint", "cmaam", "preserve_mean", "adapt", "linear", "task_vector")


@dataclass
class ModelSpec:
    """One model of a comparison: its name, role, family, position on the family's curve and folder.

    ``kind`` says which step makes it: endpoint (trained), cmaam / preserve_mean / adapt (the merge step),
    linear / task_vector (the baselines step).
    """

    name: str
    role: str
    family: str
    path: Path
    kind: str = "endpoint"
    parameter: float | None = None
    settings: dict = field(default_factory=dict)  # what the run's config.yaml records about how it was made


def write_unlabeled(sets: dict[str, Path], output: Path) -> Path:
    """One unlabeled VQA JSONL from VQA files (``name -> file``): answers dropped, ids prefixed ``name/``,
    image paths made relative to ``output``'s folder. The same inputs give the same bytes."""
    import os

    from eval.readers import read_jsonl, write_jsonl_text

    rows = []
    for name, path in sets.items():
        for _, record in read_jsonl(path):
            row = {key: value for key, value in record.items() if key not in ("answer", "answers")}
            row["id"] = f"{name}/{record.get('id')}"
            if row.get("image"):
                image = Path(path).parent / row["image"]
                row["image"] = os.path.relpath(image, output.parent)
            rows.append(row)
    return atomic_write_text(output, write_jsonl_text(rows))
