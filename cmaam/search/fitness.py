"""Fitness functions of the search: a candidate genome is merged in memory and scored (higher is better).

``build_fitness`` takes only picklable arguments (the ``FitnessConfig``, model paths, genome spec,
execution options, MGSM items), so every Ray worker builds its own fitness and its own copy of the inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from cmaam.core.config import at_least, one_of, setting
from cmaam.core.errors import CMAAMError, load_errors
from cmaam.core.options import ExecutionOptions
from cmaam.search.genome import GenomeSpec
from cmaam.search.inmemory import InMemoryMerger

FITNESS_TYPES = ("mgsm", "synthetic")


@dataclass
class Evaluation:
    """The score of one genome, its metrics, and where the time went (merge vs evaluation)."""

    fitness: float
    metrics: dict[str, float] = field(default_factory=dict)
    merge_seconds: float = 0.0
    eval_seconds: float = 0.0


@dataclass
class FitnessConfig:
    """How candidates are scored (an evolve config's ``fitness`` section): MGSM on a fixed subset, or the
    synthetic fitness (closeness of the merged weights to the merge of ``target``, a known genome: proves the
    wiring end to end)."""

    type: str = setting("mgsm", check=one_of(FITNESS_TYPES))
    source: str | None = None  # TSV file, datasets folder or a bundled language code; default: lang
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


def build_merger(models: Mapping[str, str | Path], base_model: str, genome: GenomeSpec,
                 options: ExecutionOptions) -> InMemoryMerger:
    """The in-memory merger of ``models`` (loads every input tensor onto the device once)."""
    return InMemoryMerger(models, base_model, genome, options)


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
def answer_likelihood(model, tokenizer, prompts: Sequence[str], answers: Sequence[str]) -> float:
    """Mean over items of the per-token geometric-mean probability of the gold answer right after the prompt.

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
    return sum(scores) / len(scores)


class MGSMFitness:
    """MGSM accuracy (or another metric of ``evaluate_mgsm``) of the in-memory merge on a fixed subset.

    With ``tiebreak`` w > 0 the fitness is metric + w * answer_likelihood; keep w below 1/len(items) so
    the likelihood only orders candidates of equal accuracy.
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

    def __call__(self, genome: Sequence[float]) -> Evaluation:
        from eval.mgsm import evaluate_mgsm

        start = time.perf_counter()
        self.merger.apply(genome)
        merged = time.perf_counter()
        result = evaluate_mgsm(self.generator, self.items, self.config.lang, shots=self.config.shots,
                               chain_of_thought=self.config.chain_of_thought)
        metrics = {key: float(value) for key, value in result.metrics.items() if isinstance(value, (int, float))}
        if self.config.metric not in metrics:
            raise CMAAMError(f"fitness.metric {self.config.metric!r} is not an MGSM metric "
                             f"(available: {', '.join(sorted(metrics))})")
        fitness = metrics[self.config.metric]
        if self.config.tiebreak:
            metrics["answer_likelihood"] = answer_likelihood(self.merger.model, self.tokenizer, self.prompts,
                                                             self.answers)
            fitness += float(self.config.tiebreak) * metrics["answer_likelihood"]
        return Evaluation(fitness, metrics, merged - start, time.perf_counter() - merged)


def build_fitness(config: FitnessConfig, models: Mapping[str, str | Path], base_model: str, genome: GenomeSpec,
                  options: ExecutionOptions | None = None, items: Sequence[Any] = (),
                  tokenizer: str | Path | None = None) -> Callable[[Sequence[float]], Evaluation]:
    """Build, in this process, the fitness ``config`` describes over the in-memory merge of ``models``.

    ``options``: device, dtype, seed (dare masks), pickles and remote code of the merge; ``items``: the fixed
    MGSM subset; ``tokenizer``: its folder (default the base model's). Ray workers each call this with the
    same (picklable) arguments, so each holds its own copy of the inputs.
    """
    options = options or ExecutionOptions()
    if config.type not in FITNESS_TYPES:
        raise CMAAMError(f"fitness: unknown type {config.type!r} (choose {', '.join(FITNESS_TYPES)})")
    if config.type == "synthetic" and not isinstance(config.target, (list, tuple)):
        raise CMAAMError("fitness: the synthetic fitness needs a target genome (one value per gene)")
    merger = build_merger(models, base_model, genome, options)
    if config.type == "synthetic":
        return SyntheticFitness(merger, [float(value) for value in config.target])
    return MGSMFitness(merger, config, items, tokenizer, options.trust_remote_code)
