"""Merging models mapped onto a target's layout: what must stay the target's.

Tensors a mapped model has no counterpart for (a VLM's vision tower when the other model is a text LLM) are
copied from the target. Vocabulary rows a mapped source has no token for: a ``MappedReader`` (``cmaam.io.views``)
fills them with the target's own values, so most methods already return them unchanged; linear interpolation
would return (1 - a) * T + a * T, equal only up to rounding. The wrapped merge puts the target's rows back, so
they are bit-identical whatever the method.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import torch

from cmaam.io.views import MappedReader
from cmaam.merging.executor import TensorJob


def restore_rows(result: torch.Tensor, original: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``result`` with ``rows`` put back from ``original`` (a copy: inputs are shared with other consumers)."""
    result = result.clone()
    result[rows.to(result.device)] = original[rows.to(original.device)].to(result.dtype)
    return result


def _keep_rows(merge: Callable[[list[torch.Tensor]], torch.Tensor], rows: torch.Tensor, position: int,
               tensors: list[torch.Tensor]) -> torch.Tensor:
    return restore_rows(merge(tensors), tensors[position], rows)


def target_position(job: TensorJob, target: str) -> int | None:
    """Where the target's tensor is among a job's inputs (None when the job does not read the target)."""
    return next((i for i, (model, _) in enumerate(job.inputs) if model == target), None)


def kept_rows(readers: Mapping[str, object], job: TensorJob) -> torch.Tensor | None:
    """The target-only rows of a job's output (from any mapped input), None when every row is merged."""
    for model, name in job.inputs:
        found = readers[model].kept_rows(name) if isinstance(readers[model], MappedReader) else None
        if found is not None:
            return found
    return None


def keep_target_parts(jobs: Sequence[TensorJob], readers: Mapping[str, object], target: str) -> list[TensorJob]:
    """``jobs`` with what only the target has kept from it: a job reading a tensor a mapped model lacks copies
    the target's tensor; a merge of a mapped vocabulary tensor keeps the target's own rows."""
    wrapped = []
    for job in jobs:
        position = target_position(job, target)
        if position is not None and any(isinstance(readers[model], MappedReader) and name not in readers[model]
                                        for model, name in job.inputs):
            wrapped.append(TensorJob(job.output_name, [job.inputs[position]], None, job.dtype))
            continue
        rows = kept_rows(readers, job)
        if rows is None or job.merge is None or position is None:
            wrapped.append(job)
        else:
            wrapped.append(dataclasses.replace(job, merge=functools.partial(_keep_rows, job.merge, rows, position),
                                               row_local=False))  # the kept rows are indices of the whole tensor
    return wrapped


class KeepTargetRows:
    """A consumer whose merged outputs keep the target's own vocabulary rows (for consumers with their own merge
    function, as a sweep's one output per alpha; ``keep_target_parts`` does it for the jobs' merges)."""

    def __init__(self, inner: Any, readers: Mapping[str, object], target: str):
        self.inner, self.readers, self.target = inner, readers, target

    def consume(self, job: TensorJob, tensors: list[torch.Tensor]) -> Any:
        output = self.inner.consume(job, tensors)
        rows = kept_rows(self.readers, job) if job.compute and output is not None else None
        position = target_position(job, self.target)
        if rows is not None and position is not None:
            output.then(functools.partial(restore_rows, original=tensors[position], rows=rows))
        return output

    def accepts_blocks(self, job: TensorJob) -> bool:
        """Row blocks when the inner consumer takes them and the job keeps no target rows."""
        return kept_rows(self.readers, job) is None and getattr(self.inner, "accepts_blocks", lambda job: False)(job)

    def accepts_stored(self, job: TensorJob) -> bool:
        """As the inner consumer, for a job keeping no target rows."""
        return kept_rows(self.readers, job) is None and getattr(self.inner, "accepts_stored", lambda job: False)(job)

    def consume_block(self, job: TensorJob, block: Any, tensors: list[torch.Tensor]) -> Any:
        return self.inner.consume_block(job, block, tensors)

    def checks_inputs(self, job: TensorJob) -> bool:
        """As the inner consumer, for a job keeping no target rows (kept rows hide the source's rows)."""
        return kept_rows(self.readers, job) is None and getattr(self.inner, "checks_inputs", lambda job: False)(job)

    def finish(self) -> None:
        self.inner.finish()
