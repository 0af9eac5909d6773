"""Merging during the analysis pass: groups whose alphas are known before the pass ends, from held tensors.

An alpha depends only on the scores of the tensors of its *unit*: its alpha group for ``basic``,
``component`` and ``layerwise`` (one layer of one stack: a layer-local group); its whole component for
strategies that combine the component's alignment (``full``: A = sqrt(A_component * A_group)); the whole
model with ``--preserve-mean`` (one factor rescales every alpha). As soon as the last tensor of a unit has
been scored, the alphas of its groups are exactly those the whole analysis will give (``compute_alphas``
on the unit's scores, in target order: the same sums in the same order). The tensors of a unit are held
(as stored, on the CPU) from its first tensor to its last, then merged and written behind; the merge
pass then reads only the rest. Which units are held is planned before the pass, from the job order and
the tensor sizes, so that the held tensors never exceed ``hold_budget`` bytes at any point of the stream.

What this gives per strategy (docs/performance.md, "Two passes"): with ``layerwise`` the layers of
both stacks (one at a time) are merged in the first pass and only the non-layer groups (token embedding,
final norm, lm_head, patch embedding, which sit far apart in the stream) wait; with ``full`` a unit is a
whole component, so only components small enough to hold (the bridge) are merged early and the
language and vision components wait for the merge pass; with ``basic`` and ``--preserve-mean``
everything waits unless the whole model fits in ``hold_budget`` (small models: then there is no second pass).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from cmaam.alignment.alphas.plan import AlphaConfig, compute_alphas
from cmaam.alignment.alphas.strategies import get_strategy
from cmaam.alignment.scores.analyzer import Analysis, PairScorer
from cmaam.io import CheckpointReader, CheckpointWriter
from cmaam.merging.executor import Block, TensorJob, TensorOutput, row_chunks
from cmaam.merging.pairs import interpolate

WHOLE_MODEL = "(all tensors)"


def alpha_units(scorer: PairScorer, config: AlphaConfig) -> Callable[[str], str]:
    """Tensor name -> the unit whose scores decide its alpha (see the module docstring)."""
    strategy = get_strategy(config.strategy)
    if config.preserve_mean:
        return lambda name: WHOLE_MODEL
    if strategy.combine is not None:
        return lambda name: scorer.infos[name].component
    return lambda name: strategy.group_key(scorer.infos[name])


def held_dtype(stored: torch.dtype) -> torch.dtype:
    """The dtype a tensor is held in: as stored when float32 -> stored is exact (16-bit, float32), else float32
    (what the merge computes from anyway)."""
    return stored if stored in (torch.bfloat16, torch.float16, torch.float32) else torch.float32


def plan_units(order: list[str], unit_of: Callable[[str], str], sizes: dict[str, int], hold_budget: int) -> set[str]:
    """The units to hold: taken in order of first appearance while the bytes held over each unit's span of
    the stream (first to last tensor, all of it counted throughout) stay within ``hold_budget``."""
    spans: dict[str, list[int]] = {}
    held: dict[str, int] = {}
    for position, name in enumerate(order):
        unit = unit_of(name)
        spans.setdefault(unit, [position, position])[1] = position
        held[unit] = held.get(unit, 0) + sizes[name]
    load = [0] * len(order)
    chosen = set()
    for unit, (first, last) in spans.items():
        if max(load[first:last + 1]) + held[unit] <= hold_budget:
            chosen.add(unit)
            for position in range(first, last + 1):
                load[position] += held[unit]
    return chosen


class EarlyMerge:
    """Analysis-pass consumer (after the PairScorer) holding chosen units and writing their merges once scored.

    ``written`` lists the tensors already merged into ``writer``; the merge pass does the others.
    """

    def __init__(self, scorer: PairScorer, readers: dict[str, CheckpointReader], writer: CheckpointWriter,
                 config: AlphaConfig, interp: str, hold_budget: int, device: str = "cpu"):
        self.scorer = scorer
        self.readers = readers
        self.writer = writer
        self.config = config
        self.interp = interp
        self.device = device
        self.unit_of = alpha_units(scorer, config)
        order = [job.output_name for job in scorer.jobs() if len(job.inputs) == 2]
        target = readers["target"]
        sizes = {name: 2 * target.numel(name) * torch.empty((), dtype=held_dtype(target.dtype(name))).element_size()
                 for name in order}
        self.units = plan_units(order, self.unit_of, sizes, hold_budget)
        self.remaining: dict[str, int] = {}
        for name in order:
            if self.unit_of(name) in self.units:
                self.remaining[self.unit_of(name)] = self.remaining.get(self.unit_of(name), 0) + 1
        self.held: dict[str, dict[str, list[torch.Tensor]]] = {}  # unit -> tensor -> [target, source]
        self.written: set[str] = set()

    def accepts_blocks(self, job: TensorJob) -> bool:
        return True

    def consume(self, job: TensorJob, tensors: list[torch.Tensor]) -> Iterator[TensorOutput] | None:
        if not self._holds(job):
            return None
        loaded = {model: tensor for (model, _), tensor in zip(job.inputs, tensors)}
        dtype = held_dtype(self.readers["target"].dtype(job.output_name))
        self._unit(job)[job.output_name] = [loaded[model].to(device="cpu", dtype=dtype)
                                            for model in ("target", "source")]
        return self._done(job)

    def consume_block(self, job: TensorJob, block: Block, tensors: list[torch.Tensor]) -> Iterator[TensorOutput] | None:
        if not self._holds(job):
            return None
        name = job.output_name
        loaded = {model: tensor for (model, _), tensor in zip(job.inputs, tensors)}
        unit = self._unit(job)
        if block.start == 0:
            dtype = held_dtype(self.readers["target"].dtype(name))
            unit[name] = [torch.empty((block.rows, *tensors[0].shape[1:]), dtype=dtype) for _ in range(2)]
        for held, model in zip(unit[name], ("target", "source")):
            held[block.start:block.stop].copy_(loaded[model])
        return self._done(job) if block.last else None

    def _holds(self, job: TensorJob) -> bool:
        return len(job.inputs) == 2 and self.unit_of(job.output_name) in self.units

    def _unit(self, job: TensorJob) -> dict[str, list[torch.Tensor]]:
        return self.held.setdefault(self.unit_of(job.output_name), {})

    def _done(self, job: TensorJob) -> Iterator[TensorOutput] | None:
        unit = self.unit_of(job.output_name)
        self.remaining[unit] -= 1
        if self.remaining[unit]:
            return None
        return self._release(unit)

    def _release(self, unit: str) -> Iterator[TensorOutput]:
        """The unit's merged tensors, one (row chunk) at a time, at the alphas the whole analysis gives."""
        tensors = self.held.pop(unit)
        names = [name for name in self.scorer.scored if name in tensors]  # target order: the same sums
        analysis = Analysis(model_type=self.scorer.analysis.model_type,
                            tensors={name: self.scorer.analysis.tensors[name] for name in names})
        plan = compute_alphas(analysis, self.config)
        for name in names:
            target, source = tensors.pop(name)
            alpha = plan.alpha(name)
            chunks = row_chunks(tuple(target.shape)) if target.dim() and self.interp == "linear" else []
            if len(chunks) < 2:
                merged = interpolate([target.to(self.device, torch.float32), source.to(self.device, torch.float32)],
                                     alpha, self.interp)
                yield TensorOutput(merged, lambda tensor, name=name: self.writer.add(name, tensor), f"merged {name}",
                                   self.writer.stored_dtype(name))
            else:
                for chunk in chunks:
                    pair = [held[chunk.start:chunk.stop].to(self.device, torch.float32) for held in (target, source)]
                    yield TensorOutput(interpolate(pair, alpha, self.interp),
                                       lambda tensor, name=name, start=chunk.start:
                                       self.writer.add_rows(name, start, tensor), f"merged {name}",
                                       self.writer.stored_dtype(name))
            self.written.add(name)
            del target, source

    def finish(self) -> None:
        pass


def hold_budget(max_memory: int) -> int:
    """Bytes the analysis pass may hold for early merges: half the memory budget (the row blocks get the rest)."""
    return max_memory // 2

