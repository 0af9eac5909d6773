"""Fitness functions of the search: a candidate genome is merged in memory and scored (higher is better).

``FitnessSpec`` is a small picklable description, so every Ray worker builds its own fitness (and its
own copy of the inputs) from it; ``build_fitness`` turns it into a callable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from cmaam.io import parse_dtype
from cmaam.core.errors import CMAAMError, load_errors
from cmaam.search.dataflow import DataFlowMerger, DataFlowSpec, DataFlowSyntheticFitness
from cmaam.search.genome import GenomeSpec
from cmaam.search.vlm import AlphaLayout, AlphaMerger, VQAFitness
from cmaam.search.inmemory import InMemoryMerger

FITNESS_TYPES = ("mgsm", "vqa", "synthetic")


@dataclass
class Evaluation:
    """The score of one genome, its metrics, and where the time went (merge vs evaluation)."""

    fitness: float
    metrics: dict[str, float] = field(default_factory=dict)
    merge_seconds: float = 0.0
    eval_seconds: float = 0.0
    item_scores: list[float] | None = None  # per scored item; their mean is the fitness (item-based fitnesses)


@dataclass
class FitnessSpec:
    """Everything a worker needs to build the fitness: models, genome, device and the scoring setup.

    ``kind`` is "mgsm" (MGSM accuracy of the merged model on ``items``) or "synthetic" (closeness of
    the merged weights to the merge of ``target``, a known genome: proves the wiring end to end).
    """

    kind: str
    models: dict[str, str]
    base_model: str
    genome: GenomeSpec
    device: str = "cpu"
    dtype: str | None = None
    seed: int = 0
    trust_remote_code: bool = False
    allow_pickle: bool = False
    target: list[float] | None = None  # synthetic
    items: list[Any] = field(default_factory=list)  # mgsm: eval.mgsm MGSMItem list (the fixed subset)
    lang: str = "en"
    shots: int = 0
    chain_of_thought: bool = True
    max_new_tokens: int = 256
    batch_size: int = 8
    metric: str = "accuracy"
    tiebreak: float = 0.0  # weight of the gold-answer likelihood added to the metric (0 = off)
    tokenizer: str | None = None  # folder of the tokenizer; default the base model's
    dataflow: DataFlowSpec | None = None  # set: the genome is an inference path (cmaam.search.dataflow)
    alpha_layout: AlphaLayout | None = None  # set: the genome holds a VLM pair's group alphas (cmaam.search.vlm)
    retention_items: list[Any] = field(default_factory=list)  # vqa: the retention set's VQAItems
    weights: dict[str, float] = field(default_factory=dict)  # vqa: target / retention weights


def build_merger(spec: FitnessSpec) -> InMemoryMerger | DataFlowMerger | AlphaMerger:
    """The in-memory merger described by ``spec`` (loads every input tensor onto the device once)."""
    if spec.alpha_layout is not None:
        return AlphaMerger(spec.models, spec.alpha_layout, device=spec.device, dtype=parse_dtype(spec.dtype),
                           trust_remote_code=spec.trust_remote_code, allow_pickle=spec.allow_pickle)
    if spec.dataflow is not None:
        return DataFlowMerger(spec.models, spec.base_model, spec.dataflow, device=spec.device,
                              dtype=parse_dtype(spec.dtype), trust_remote_code=spec.trust_remote_code,
                              allow_pickle=spec.allow_pickle)
    return InMemoryMerger(spec.models, spec.base_model, spec.genome, device=spec.device, dtype=parse_dtype(spec.dtype),
                          seed=spec.seed, trust_remote_code=spec.trust_remote_code, allow_pickle=spec.allow_pickle)


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


ITEM_SCORES = {"accuracy": "correct", "accuracy_with_language_check": "correct_with_language_check",
               "language_match_rate": "language_ok"}  # MGSM metric -> its per-item field


class MGSMFitness:
    """MGSM accuracy (or another metric of ``evaluate_mgsm``) of the in-memory merge on a fixed subset.

    With ``tiebreak`` w > 0 the fitness is metric + w * answer_likelihood; keep w below 1/len(items) so
    the likelihood only orders candidates of equal accuracy. ``items`` (indices into the subset) scores
    a part of it; the fitness is then the mean of those items' scores.
    """

    def __init__(self, merger: InMemoryMerger, spec: FitnessSpec):
        from transformers import AutoTokenizer

        from eval.generation import HFGenerator
        from eval.mgsm import mgsm_requests

        self.merger = merger
        self.spec = spec
        tokenizer_path = spec.tokenizer or merger.base_path
        with load_errors(tokenizer_path, "tokenizer"):
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=spec.trust_remote_code)
        self.generator = HFGenerator.from_model(merger.model, self.tokenizer, batch_size=spec.batch_size,
                                                max_new_tokens=spec.max_new_tokens, progress=False)
        requests = mgsm_requests(spec.items, spec.lang, shots=spec.shots, chain_of_thought=spec.chain_of_thought)
        self.prompts = [self.generator.render(request) for request in requests]
        self.answers = [format_answer(item.answer) for item in spec.items]

    def __call__(self, genome: Sequence[float], items: Sequence[int] | None = None) -> Evaluation:
        from eval.mgsm import evaluate_mgsm

        positions = list(range(len(self.spec.items))) if items is None else [int(i) for i in items]
        start = time.perf_counter()
        self.merger.apply(genome)
        merged = time.perf_counter()
        result = evaluate_mgsm(self.generator, [self.spec.items[i] for i in positions], self.spec.lang,
                               shots=self.spec.shots, chain_of_thought=self.spec.chain_of_thought)
        metrics = {key: float(value) for key, value in result.metrics.items() if isinstance(value, (int, float))}
        if self.spec.metric not in metrics:
            raise CMAAMError(f"fitness.metric {self.spec.metric!r} is not an MGSM metric "
                             f"(available: {', '.join(sorted(metrics))})")
        fitness = metrics[self.spec.metric]
        field_name = ITEM_SCORES.get(self.spec.metric)
        scores = [float(sample[field_name]) for sample in result.samples] if field_name else None
        if self.spec.tiebreak:
            likelihoods = answer_likelihoods(self.merger.model, self.tokenizer, [self.prompts[i] for i in positions],
                                             [self.answers[i] for i in positions])
            metrics["answer_likelihood"] = sum(likelihoods) / len(likelihoods)
            fitness += float(self.spec.tiebreak) * metrics["answer_likelihood"]
            if scores is not None:
                scores = [score + float(self.spec.tiebreak) * value for score, value in zip(scores, likelihoods)]
        return Evaluation(fitness, metrics, merged - start, time.perf_counter() - merged, scores)


def build_fitness(spec: FitnessSpec) -> Callable[[Sequence[float]], Evaluation]:
    """Build the fitness a spec describes (in this process, with its own copy of the inputs)."""
    if spec.kind not in FITNESS_TYPES:
        raise CMAAMError(f"fitness: unknown type {spec.kind!r} (choose {', '.join(FITNESS_TYPES)})")
    merger = build_merger(spec)
    if spec.kind == "synthetic":
        if spec.target is None:
            raise CMAAMError("fitness: the synthetic fitness needs a target genome")
        if isinstance(merger, DataFlowMerger):
            return DataFlowSyntheticFitness(merger, spec.target, seed=spec.seed)
        return SyntheticFitness(merger, spec.target)
    if spec.kind == "vqa":
        return VQAFitness(merger, spec)
    return MGSMFitness(merger, spec)
