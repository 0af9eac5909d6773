"""Fitness functions of the search: a candidate genome is merged in memory and scored (higher is better).

``build_fitness`` takes only picklable arguments (the ``FitnessConfig``, model paths, what the genome
describes, execution options, the items), so every Ray worker builds its own fitness and its own copy of
the inputs. Item-based fitnesses (MGSM, VQA) can score a part of their items (``items=``) and return
per-item scores, for ``fitness.subset``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from cmaam.core.config import InvalidValue, at_least, one_of, setting
from cmaam.core.errors import CMAAMError, load_errors
from cmaam.core.options import ExecutionOptions
from cmaam.search.dataflow import DataFlowMerger, DataFlowSpec, DataFlowSyntheticFitness
from cmaam.search.genome import GenomeSpec
from cmaam.search.inmemory import InMemoryMerger
from cmaam.search.subset import SubsetSpec
from cmaam.search.vlm import VQA_METRICS, AlphaLayout, AlphaMerger, VQAFitness

FITNESS_TYPES = ("mgsm", "vqa", "synthetic")
ITEM_SCORES = {"accuracy": "correct", "accuracy_with_language_check": "correct_with_language_check",
               "language_match_rate": "language_ok"}  # MGSM metric -> its per-item field
SearchSpace = GenomeSpec | DataFlowSpec | AlphaLayout  # what a genome describes (cmaam.search.evolution)


@dataclass
class Evaluation:
    """The score of one genome, its metrics, and where the time went (merge vs evaluation)."""

    fitness: float
    metrics: dict[str, float] = field(default_factory=dict)
    merge_seconds: float = 0.0
    eval_seconds: float = 0.0
    item_scores: list[float] | None = None  # per scored item; their mean is the fitness (item-based fitnesses)


@dataclass
class FitnessConfig:
    """How candidates are scored (an evolve config's ``fitness`` section): MGSM on a fixed subset, VQA with
    images (a VLM pair, ``space: alphas``), or the synthetic fitness (closeness of the merged weights, or of a
    data-flow path's logits, to those of ``target``, a known genome: proves the wiring end to end)."""

    type: str = setting("mgsm", check=one_of(FITNESS_TYPES))
    source: str | None = None  # mgsm: TSV file, datasets folder or bundled language code (default: lang); vqa: folder
    lang: str = "en"
    limit: int | None = setting(50, check=at_least(1))
    offset: int = setting(0, check=at_least(0))
    shots: int = setting(0, check=at_least(0))
    chain_of_thought: bool = True
    max_new_tokens: int = setting(256, check=at_least(1))
    batch_size: int = setting(8, check=at_least(1))
    metric: str = "accuracy"
    tiebreak: float = 0.0  # + tiebreak * gold-answer likelihood (keep below 1/limit; 0 = off)
    target: float | list[float] | None = None  # synthetic: the genome to recover (one value, or every gene's)
    subset: SubsetSpec | None = None  # cheaper fitness: score on a chosen item subset after generation 1
    split: str = "val"  # vqa: the split file of source (and retention) folders: <split>.jsonl
    retention: str | None = None  # vqa: English retention set (folder or JSONL)
    retention_limit: int | None = setting(None, check=at_least(1))  # vqa: default: limit
    weights: dict[str, float] = field(default_factory=lambda: {"target": 1.0, "retention": 1.0})  # vqa objective

    def validate(self) -> None:
        """What involves several keys: the subset needs items, the VQA metric and weights."""
        if self.subset is not None and self.type == "synthetic":
            raise InvalidValue("subset", "needs an item-based fitness (mgsm, vqa), not synthetic")
        if self.type == "vqa":
            if not self.source:
                raise InvalidValue("source", f"is required for vqa (a VQA folder with {self.split}.jsonl)")
            if self.metric not in VQA_METRICS:
                raise InvalidValue("metric", f"for vqa must be one of {', '.join(VQA_METRICS)}, got {self.metric!r}")
        if set(self.weights) - {"target", "retention"} or any(value < 0 for value in self.weights.values()):
            raise InvalidValue("weights", f"must map target and retention to numbers >= 0, got {self.weights!r}")


def build_merger(models: Mapping[str, str | Path], base_model: str, space: SearchSpace,
                 options: ExecutionOptions) -> InMemoryMerger | DataFlowMerger | AlphaMerger:
    """The in-memory merger of ``models`` for what the genome describes: merge coefficients (a GenomeSpec), an
    inference path (a DataFlowSpec) or a VLM pair's group alphas (an AlphaLayout); each loads its inputs once."""
    if isinstance(space, DataFlowSpec):
        return DataFlowMerger(models, base_model, space, options)
    if isinstance(space, AlphaLayout):
        return AlphaMerger(models, space, options)
    return InMemoryMerger(models, base_model, space, options)


class SyntheticFitness:
    """Negative mean over tensors of ||merged - target||^2 / ||task vector||^2 (0 at the target genome).

    The per-tensor normalisation gives every gene a comparable effect, so the optimum is well
    conditioned and recovering the target coefficients checks genome -> merge -> fitness.
    """

    def __init__(self, merger: InMemoryMerger, target: Sequence[float]):
        merger.layout.check_genome(target, "fitness.target")
        self.merger = merger
        merger.apply(target)
        self.target = {name: merger.targets[name].detach().float().clone() for name in merger.layout.tensor_names}
        self.scale = {}
        for name in merger.layout.tensor_names:
            base, *others = merger.inputs[name]
            spread = sum(float((other.float() - base.float()).pow(2).sum()) for other in others)
            self.scale[name] = spread if spread > 0 else 1.0

    @torch.no_grad()
    def __call__(self, genome: Sequence[float]) -> Evaluation:
        start = time.perf_counter()
        self.merger.apply(genome)
        merged = time.perf_counter()
        distances = [float((self.merger.targets[name].float() - target).pow(2).sum()) / self.scale[name]
                     for name, target in self.target.items()]
        distance = sum(distances) / len(distances)
        return Evaluation(-distance, {"distance": distance}, merged - start, time.perf_counter() - merged)


def format_answer(value: float) -> str:
    """A gold MGSM answer as the model should write it: 18.0 -> "18", 2.5 -> "2.5"."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@torch.no_grad()
def answer_likelihoods(model, tokenizer, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
    """Per item: the per-token geometric-mean probability of the gold answer right after the prompt.

    In (0, 1]; a smooth signal where accuracy on a small subset is flat (e.g. early in a search).
    """
    scores = []
    for prompt, answer in zip(prompts, answers):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + answer_ids], device=model.device)
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
        targets = torch.tensor(answer_ids, device=logits.device).unsqueeze(1)
        scores.append(float(torch.log_softmax(logits, dim=-1).gather(1, targets).mean().exp()))
    return scores


def answer_likelihood(model, tokenizer, prompts: Sequence[str], answers: Sequence[str]) -> float:
    """Mean over items of ``answer_likelihoods``."""
    scores = answer_likelihoods(model, tokenizer, prompts, answers)
    return sum(scores) / len(scores)


class MGSMFitness:
    """MGSM accuracy (or another metric of ``evaluate_mgsm``) of the in-memory merge on a fixed subset.

    With ``tiebreak`` w > 0 the fitness is metric + w * answer_likelihood; keep w below 1/len(items) so
    the likelihood only orders candidates of equal accuracy. ``items`` (indices into the subset) scores
    a part of it; the fitness is then the mean of those items' scores.
    """

    def __init__(self, merger: InMemoryMerger, config: FitnessConfig, items: Sequence[Any],
                 tokenizer: str | Path | None = None, trust_remote_code: bool = False):
        from transformers import AutoTokenizer

        from eval.generation import HFGenerator
        from eval.mgsm import mgsm_requests

        self.merger = merger
        self.config = config
        self.items = list(items)
        tokenizer_path = tokenizer or merger.base_path
        with load_errors(tokenizer_path, "tokenizer"):
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=trust_remote_code)
        self.generator = HFGenerator.from_model(merger.model, self.tokenizer, batch_size=config.batch_size,
                                                max_new_tokens=config.max_new_tokens, progress=False)
        requests = mgsm_requests(self.items, config.lang, shots=config.shots, chain_of_thought=config.chain_of_thought)
        self.prompts = [self.generator.render(request) for request in requests]
        self.answers = [format_answer(item.answer) for item in self.items]

    def __call__(self, genome: Sequence[float], items: Sequence[int] | None = None) -> Evaluation:
        from eval.mgsm import evaluate_mgsm

        positions = list(range(len(self.items))) if items is None else [int(i) for i in items]
        start = time.perf_counter()
        self.merger.apply(genome)
        merged = time.perf_counter()
        result = evaluate_mgsm(self.generator, [self.items[i] for i in positions], self.config.lang,
                               shots=self.config.shots, chain_of_thought=self.config.chain_of_thought)
        metrics = {key: float(value) for key, value in result.metrics.items() if isinstance(value, (int, float))}
        if self.config.metric not in metrics:
            raise CMAAMError(f"fitness.metric {self.config.metric!r} is not an MGSM metric "
                             f"(available: {', '.join(sorted(metrics))})")
        fitness = metrics[self.config.metric]
        field_name = ITEM_SCORES.get(self.config.metric)
        scores = [float(sample[field_name]) for sample in result.samples] if field_name else None
        if self.config.tiebreak:
            likelihoods = answer_likelihoods(self.merger.model, self.tokenizer, [self.prompts[i] for i in positions],
                                             [self.answers[i] for i in positions])
            metrics["answer_likelihood"] = sum(likelihoods) / len(likelihoods)
            fitness += float(self.config.tiebreak) * metrics["answer_likelihood"]
            if scores is not None:
                scores = [score + float(self.config.tiebreak) * value for score, value in zip(scores, likelihoods)]
        return Evaluation(fitness, metrics, merged - start, time.perf_counter() - merged, scores)


def build_fitness(config: FitnessConfig, models: Mapping[str, str | Path], base_model: str, space: SearchSpace,
                  options: ExecutionOptions | None = None, items: Sequence[Any] = (),
                  tokenizer: str | Path | None = None, retention_items: Sequence[Any] = ()
                  ) -> Callable[[Sequence[float]], Evaluation]:
    """Build, in this process, the fitness ``config`` describes over the in-memory merge of ``models``.

    ``space``: what the genome describes (GenomeSpec, DataFlowSpec or AlphaLayout); ``options``: device,
    dtype, seed (dare masks, synthetic inputs), pickles and remote code of the merge; ``items``: the fixed
    MGSM subset or the VQA dev items (``retention_items``: the VQA retention items); ``tokenizer``: its
    folder (default the base model's). Ray workers each call this with the same (picklable) arguments, so
    each holds its own copy of the inputs.
    """
    options = options or ExecutionOptions()
    if config.type not in FITNESS_TYPES:
        raise CMAAMError(f"fitness: unknown type {config.type!r} (choose {', '.join(FITNESS_TYPES)})")
    if config.type == "synthetic" and not isinstance(config.target, (list, tuple)):
        raise CMAAMError("fitness: the synthetic fitness needs a target genome (one value per gene)")
    merger = build_merger(models, base_model, space, options)
    if config.type == "synthetic":
        target = [float(value) for value in config.target]
        if isinstance(merger, DataFlowMerger):
            return DataFlowSyntheticFitness(merger, target, seed=options.seed)
        return SyntheticFitness(merger, target)
    if config.type == "vqa":
        return VQAFitness(merger, config, items, retention_items, options.trust_remote_code)
    return MGSMFitness(merger, config, items, tokenizer, options.trust_remote_code)
