"""Model soups (Wortsman et al. 2022, arXiv:2203.05482): uniform and greedy weight averaging of
fine-tunes of one architecture, written through the streaming engine (atomic output).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tqdm import tqdm

from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader, parse_dtype
from cmaam.io.adapters import open_model
from cmaam.io.atomic import (
    atomic_write_json,
    check_output_free,
    claim_output,
    replace_directory,
)
from cmaam.merging.executor import TensorJob, run_merge
from cmaam.merging.methods import get_method

DECISIONS_FILE = "greedy_soup.json"


@dataclass
class SoupDecision:
    """One step of the greedy soup: the ingredient tried, its own score and the soup's score with it."""

    ingredient: str
    individual_score: float
    soup_score: float
    accepted: bool
    soup_size: int  # ingredients in the soup after this step


@dataclass
class GreedySoupResult:
    """The greedy soup written to ``output``: chosen ingredients (in order added), its score, every decision."""

    output: Path
    ingredients: list[str]
    score: float
    decisions: list[SoupDecision] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"output": str(self.output), "ingredients": self.ingredients, "score": self.score,
                "decisions": [asdict(decision) for decision in self.decisions]}


@contextlib.contextmanager
def open_ingredients(models: Sequence[str | Path], allow_pickle: bool = False, adapter_base: str | Path | None = None
                     ) -> Iterator[dict[str, CheckpointReader]]:
    """Open every ingredient (model or peft LoRA adapter folder) lazily and check they hold the same tensor names
    (shapes are checked by the engine)."""
    if not models:
        raise CMAAMError("a soup needs at least one model")
    with contextlib.ExitStack() as stack:
        readers = {str(i): stack.enter_context(open_model(path, allow_pickle, adapter_base))
                   for i, path in enumerate(models)}
        names = set(readers["0"].keys())
        for reader in list(readers.values())[1:]:
            other = set(reader.keys())
            if other != names:
                missing, extra = sorted(names - other), sorted(other - names)
                raise CMAAMError(f"{reader.path}: tensors differ from {readers['0'].path} "
                                 f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                                 f"extra {extra[:5]}{'...' if len(extra) > 5 else ''})")
        yield readers


def _average(count: int) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    linear = get_method("linear")
    return lambda tensors: linear(tensors, None, weight=[1.0] * count, normalize=True)


def _write_soup(readers: dict[str, CheckpointReader], ids: Sequence[str], output: str | Path,
                options: ExecutionOptions, before_commit: Callable[[Path], None] | None = None) -> Path:
    """Average the ingredients ``ids`` of ``readers`` into ``output`` (the first one's config and tokenizer)."""
    merge = _average(len(ids))
    first = readers[ids[0]]
    jobs = [TensorJob(name, [(model, name) for model in ids], merge) for name in first.keys()]
    return run_merge(readers, jobs, output, options, reference=first.reference_folder,
                     description=f"soup of {len(ids)}", before_commit=before_commit)


def uniform_soup(models: Sequence[str | Path], output: str | Path, options: ExecutionOptions | None = None) -> Path:
    """Equal-weight average of ``models`` written to ``output`` (config and tokenizer from the first).

    ``options``: device, output dtype, overwrite, pickles, NaN/Inf check, shard size, progress.
    """
    options = options or ExecutionOptions()
    parse_dtype(options.dtype)  # an unknown dtype fails before any work
    with claim_output(output, inputs=models, overwrite=options.overwrite), \
            open_ingredients(models, options.allow_pickle, options.adapter_base) as readers:
        return _write_soup(readers, list(readers), output, options)


def _score(score_fn: Callable[[Path], float], path: Path) -> float:
    value = score_fn(path)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise CMAAMError(f"score function returned {value!r} for {path}, not a number") from None
    if not math.isfinite(value):
        raise CMAAMError(f"score function returned {value} for {path}")
    return value


def greedy_soup(models: Sequence[str | Path], score_fn: Callable[[Path], float], output: str | Path,
                options: ExecutionOptions | None = None) -> GreedySoupResult:
    """Greedy soup: rank ingredients by their own score (higher is better), then add each in turn if
    the soup's score does not drop. ``score_fn`` takes a model folder.

    Candidate soups are written to a hidden folder beside ``output`` (removed at the end, also on error);
    the chosen soup is renamed to ``output`` with the decisions in ``greedy_soup.json``.
    """
    options = options or ExecutionOptions()
    parse_dtype(options.dtype)  # an unknown dtype fails before any work
    overwrite = options.overwrite
    candidates = dataclasses.replace(options, overwrite=False)
    output = Path(output)
    # the output is checked and locked before any work
    with claim_output(output, inputs=models, overwrite=overwrite) as real, \
            open_ingredients(models, options.allow_pickle, options.adapter_base) as readers:
        paths = {model: str(models[int(model)]) for model in readers}
        own = {model: _score(score_fn, Path(paths[model])) for model in readers}
        ranked = sorted(readers, key=lambda model: -own[model])  # stable: ties keep input order
        soup, best, best_folder = [ranked[0]], own[ranked[0]], None
        decisions = [SoupDecision(paths[ranked[0]], own[ranked[0]], best, True, 1)]
        work = Path(tempfile.mkdtemp(prefix=f".{real.name}.greedy-{os.getpid()}-", dir=real.parent))
        try:
            for step, model in enumerate(tqdm(ranked[1:], desc="greedy soup", disable=not options.progress), 1):
                candidate = _write_soup(readers, soup + [model], work / f"candidate-{step}", candidates)
                score = _score(score_fn, candidate)
                accepted = score >= best
                if accepted:
                    soup.append(model)
                    best = score
                    if best_folder is not None:
                        shutil.rmtree(best_folder)
                    best_folder = candidate
                else:
                    shutil.rmtree(candidate)
                decisions.append(SoupDecision(paths[model], own[model], score, accepted, len(soup)))
            result = GreedySoupResult(output, [paths[model] for model in soup], best, decisions)
            if best_folder is None:  # nothing joined the best ingredient: write it through the engine
                _write_soup(readers, soup, output, options,
                            before_commit=lambda folder: atomic_write_json(folder / DECISIONS_FILE, result.to_dict()))
            else:
                check_output_free(output, overwrite)
                atomic_write_json(best_folder / DECISIONS_FILE, result.to_dict())
                replace_directory(best_folder, real)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return result
