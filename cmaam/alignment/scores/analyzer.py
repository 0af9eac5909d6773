"""The one streaming analysis pass: score every (source, target) tensor pair, then aggregate per group."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from cmaam.alignment.layouts import ParamInfo, get_layout
from cmaam.alignment.scores.cmbc import cmbc, embedding_subspace
from cmaam.alignment.scores.gfs import gfs
from cmaam.alignment.scores.pda import pda
from cmaam.alignment.scores.sensitivity import relative_change, variance_term, weighted_mean_and_cv
from cmaam.alignment.scores.streaming import EmbeddingBasisAccumulator, PairScoreAccumulator
from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader
from cmaam.merging.executor import Block, TensorJob, execute, row_chunks
from cmaam.merging.pairs import check_pair

SCORE_NAMES = ("pda", "gfs", "cmbc")
BRIDGE = "cross_modal_bridge"


@dataclass
class TensorScore:
    """Scores of one tensor pair and where it sits in the model (cmbc is None off the bridge outputs)."""

    name: str
    info: ParamInfo
    numel: int
    pda: float
    gfs: float
    cmbc: float | None
    sensitivity: float
    changed: bool = True  # False: S and T are bit-identical, so merging this tensor is a no-op at any alpha

    @property
    def component(self) -> str:
        return self.info.component

    def to_dict(self) -> dict:
        """The report.json entry: where the tensor sits, then its element count and scores."""
        return {"component": self.info.component, "stack": self.info.stack, "layer": self.info.layer,
                "numel": self.numel, "pda": self.pda, "gfs": self.gfs, "cmbc": self.cmbc,
                "sensitivity": self.sensitivity, "changed": self.changed}


@dataclass
class GroupScore:
    """Element-weighted means of the scores over the *changed* tensors of one group, and its variance v_g.

    Tensors the fine-tune left bit-identical are counted (``tensors``, ``numel``) but do not enter the
    scores, v_g or ``changed_numel`` (the weight of the group in mean alphas): merging them is a no-op.
    """

    numel: int
    tensors: int
    pda: float | None
    gfs: float | None
    cmbc: float | None
    sensitivity: float
    sensitivity_variance: float
    changed_numel: int = 0
    unchanged_tensors: int = 0

    @property
    def changed(self) -> bool:
        """True when at least one tensor of the group differs between S and T."""
        return self.changed_numel > 0

    def score(self, name: str) -> float | None:
        return getattr(self, name)


@dataclass
class Analysis:
    """Per-tensor scores of a pair, plus the tensors that could not be scored (and why)."""

    model_type: str | None
    tensors: dict[str, TensorScore]
    only_in_target: list[str] = field(default_factory=list)
    only_in_source: list[str] = field(default_factory=list)
    not_floating: list[str] = field(default_factory=list)
    embedding: str | None = None
    capture_term: bool = False


def resolve_layout(target: CheckpointReader, model_type: str | None = None, rules_file: str | None = None):
    """The layout (component rules) for the target: --rules-file, else --model-type, else its config.json."""
    if rules_file is not None or model_type is not None:
        return get_layout(model_type=model_type, rules_file=rules_file)
    return get_layout(config=target.config)


def score_tensor_pair(name: str, info: ParamInfo, source: torch.Tensor, target: torch.Tensor,
                      embedding_basis: torch.Tensor | None = None, bridge_output: bool = False) -> TensorScore:
    """All scores of one tensor pair (CMBC only for a bridge output matrix)."""
    bridge_score = cmbc(source, target, embedding_basis) if bridge_output and target.dim() >= 2 else None
    return TensorScore(name=name, info=info, numel=target.numel(), pda=pda(source, target), gfs=gfs(source, target),
                       cmbc=bridge_score, sensitivity=relative_change(source, target),
                       changed=not torch.equal(source, target))


class PairScorer:
    """Executor consumer scoring each (source, target) pair into ``analysis``.

    Its job stream starts with the token embedding (its rows span the subspace CMBC projects the bridge
    outputs on), so every tensor is read once; ``finish`` puts the scores back in target order.
    NaN/Inf inputs are zeroed when ``allow_nonfinite`` (the executor refuses them otherwise).
    A tensor larger than one compute chunk is scored from its row chunks
    (``cmaam.alignment.scores.streaming``) however it arrives, whole or in row blocks, so its scores do
    not depend on the memory budget. Bridge outputs (CMBC) are scored whole.
    """

    def __init__(self, analysis: Analysis, infos: dict[str, ParamInfo], scored: list[str], bridge_outputs: list[str],
                 allow_nonfinite: bool = False, shapes: dict[str, tuple[int, ...]] | None = None):
        self.analysis = analysis
        self.shapes = shapes or {}
        self.infos = infos
        self.scored = scored
        self.bridge_outputs = set(bridge_outputs)
        self.allow_nonfinite = allow_nonfinite
        self.embedding_basis: torch.Tensor | None = None
        self._pairs: dict[str, PairScoreAccumulator] = {}
        self._basis: EmbeddingBasisAccumulator | None = None

    def jobs(self) -> list[TensorJob]:
        """One job per scored name (inputs source, target), the embedding's first (target only if unscored)."""
        embedding = self.analysis.embedding
        jobs = [TensorJob(name, [("source", name), ("target", name)], compute=True)
                for name in self.scored if name != embedding]
        if embedding is not None:
            inputs = [("source", embedding), ("target", embedding)] if embedding in self.scored \
                else [("target", embedding)]
            jobs.insert(0, TensorJob(embedding, inputs, compute=True))
        return jobs

    def accepts_blocks(self, job: TensorJob) -> bool:
        """Row blocks for every tensor but the bridge outputs and an embedding narrower than it is long."""
        name = job.output_name
        if name in self.bridge_outputs:
            return False
        return name != self.analysis.embedding or EmbeddingBasisAccumulator.streams(self.shapes.get(name, ()))

    def consume(self, job: TensorJob, tensors: list[torch.Tensor]) -> None:
        tensors = self._finite(tensors)
        name = job.output_name
        shape = tuple(tensors[0].shape)
        self.shapes.setdefault(name, shape)
        chunks = row_chunks(shape) if shape else []
        if len(chunks) > 1 and self.accepts_blocks(job):  # scored from its chunks, as if it came in blocks
            for chunk in chunks:
                self._consume_chunk(job, chunk, [tensor[chunk.start:chunk.stop] for tensor in tensors])
            return None
        loaded = {model: tensor for (model, _), tensor in zip(job.inputs, tensors)}
        if name == self.analysis.embedding:
            self.embedding_basis = embedding_subspace(loaded["target"])
        if "source" not in loaded:  # the embedding is only in the target (or not floating): its basis alone
            return None
        if len(chunks) > 1 and name not in self.bridge_outputs:  # a wide embedding: its basis whole, scores by chunk
            for chunk in chunks:
                self._add_pair(name, chunk, loaded["source"][chunk.start:chunk.stop],
                               loaded["target"][chunk.start:chunk.stop], shape)
            return None
        bridge = name in self.bridge_outputs
        self._store(score_tensor_pair(name, self.infos[name], loaded["source"], loaded["target"],
                                      self.embedding_basis if bridge else None, bridge), loaded["target"].shape[0])
        return None

    def consume_block(self, job: TensorJob, block: Block, tensors: list[torch.Tensor]) -> None:
        self._consume_chunk(job, block, self._finite(tensors))
        return None

    def _finite(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.allow_nonfinite:
            return [torch.nan_to_num(tensor, nan=0.0, posinf=0.0, neginf=0.0) for tensor in tensors]
        return tensors

    def _consume_chunk(self, job: TensorJob, block: Block, tensors: list[torch.Tensor]) -> None:
        loaded = {model: tensor for (model, _), tensor in zip(job.inputs, tensors)}
        name = job.output_name
        shape = (block.rows, *tensors[0].shape[1:])
        if name == self.analysis.embedding:
            if block.start == 0:
                self._basis = EmbeddingBasisAccumulator(shape, tensors[0].device)
            self._basis.add(block.start, loaded["target"])
            if block.last:
                self.embedding_basis, self._basis = self._basis.result(), None
        if "source" in loaded:
            self._add_pair(name, block, loaded["source"], loaded["target"], shape)

    def _add_pair(self, name: str, block: Block, source: torch.Tensor, target: torch.Tensor,
                  shape: tuple[int, ...]) -> None:
        if block.start == 0:
            self._pairs[name] = PairScoreAccumulator(shape, target.device)
        accumulator = self._pairs[name]
        accumulator.add(block.start, source, target)
        if block.last:
            pda_score, gfs_score, sensitivity, changed = self._pairs.pop(name).result()
            self._store(TensorScore(name=name, info=self.infos[name], numel=math.prod(shape), pda=pda_score,
                                    gfs=gfs_score, cmbc=None, sensitivity=sensitivity, changed=changed), shape[0])

    def _store(self, score: TensorScore, rows: int) -> None:
        self.analysis.tensors[score.name] = score
        self.analysis.capture_term |= (score.cmbc is not None and self.embedding_basis is not None
                                       and self.embedding_basis.shape[0] == rows)

    def finish(self) -> None:
        self.analysis.tensors = {name: self.analysis.tensors[name] for name in self.scored}


def pair_scorer(source: CheckpointReader, target: CheckpointReader, options: ExecutionOptions | None = None, *,
                layout=None, model_type: str | None = None, rules_file: str | None = None) -> PairScorer:
    """The scorer of a pair, its jobs ready to stream (checks the pair and its layout first)."""
    common = check_pair(source, target)
    layout = layout or resolve_layout(target, model_type, rules_file)
    names = list(target.keys())
    infos = layout.classify_all(names)
    if layout.has_bridge and not any(info.component == BRIDGE for info in infos.values()):
        raise CMAAMError(f"{target.path}: no cross-modal bridge tensors found for a vision-language "
                         f"{target.model_type or 'model'} (wrong --model-type or an incomplete checkpoint?)")
    analysis = Analysis(model_type=layout.model_type, tensors={},
                        only_in_target=[n for n in names if n not in source],
                        only_in_source=[n for n in source.keys() if n not in target])
    bridge_outputs = [n for n in common if layout.is_bridge_output(n)]
    if bridge_outputs:
        analysis.embedding = layout.input_embedding(names)
    analysis.not_floating = [name for name in common if not target.dtype(name).is_floating_point]
    scored = [name for name in common if target.dtype(name).is_floating_point]
    options = options or ExecutionOptions()
    return PairScorer(analysis, infos, scored, bridge_outputs, options.allow_nonfinite,
                      {name: target.shape(name) for name in names})


def analyze_pair(source: CheckpointReader, target: CheckpointReader, options: ExecutionOptions | None = None, *,
                 layout=None, model_type: str | None = None, rules_file: str | None = None) -> Analysis:
    """Score every shared floating tensor in one streaming pass (one pair in memory at a time).

    Tensors only in the target, only in the source, or not floating point are listed, not scored.
    """
    scorer = pair_scorer(source, target, options, layout=layout, model_type=model_type, rules_file=rules_file)
    execute({"source": source, "target": target}, scorer.jobs(), [scorer], options, description="analysing")
    return scorer.analysis


def _weighted_mean(pairs: list[tuple[float, int]]) -> float | None:
    total = sum(weight for _, weight in pairs)
    if not pairs or total == 0:
        return None
    return sum(value * weight for value, weight in pairs) / total


def aggregate(scores: Iterable[TensorScore], key: Callable[[TensorScore], str]) -> dict[str, GroupScore]:
    """Group tensors by ``key``; average each score over the group's changed tensors, weighted by element
    count (first-seen order). A group with no changed tensor has no scores (None) and v_g = 0."""
    members: dict[str, list[TensorScore]] = {}
    for score in scores:
        members.setdefault(key(score), []).append(score)
    groups = {}
    for group, items in members.items():
        changed = [item for item in items if item.changed]
        weights = [item.numel for item in changed]
        mean_r, cv = weighted_mean_and_cv([item.sensitivity for item in changed], weights)
        groups[group] = GroupScore(
            numel=sum(item.numel for item in items), tensors=len(items),
            pda=_weighted_mean([(item.pda, item.numel) for item in changed]),
            gfs=_weighted_mean([(item.gfs, item.numel) for item in changed]),
            cmbc=_weighted_mean([(item.cmbc, item.numel) for item in changed if item.cmbc is not None]),
            sensitivity=mean_r, sensitivity_variance=variance_term(cv),
            changed_numel=sum(weights), unchanged_tensors=len(items) - len(changed),
        )
    return groups
