"""The one streaming executor: each input tensor is read once and fed to every consumer of the run.

A run is a stream of ``TensorJob``s (one per output tensor: the inputs it reads and how they combine).
The executor loads the next job's inputs in a background thread while the current one is consumed
(prefetch), places and converts them (float32 on the compute device for compute jobs, as stored on the
CPU for copies), checks them for NaN/Inf, and hands the same tensors to every ``Consumer``: one
``ModelOutput`` per model written (a merge, a soup, a mergekit config; a sweep has one per alpha), the
analysis (``cmaam.alignment.scores.analyzer.PairScorer``), checks. The tensors a consumer returns are
checked and written behind in one writer thread while the next one is computed. Prefetch, device,
dtype, NaN/Inf checks, progress and write-behind live here and nowhere else.

Room left for two extensions. A memory budget: a job larger than the budget would be loaded in row
blocks (slices of the first dimension, read at their file offsets), with ``consume`` called once per
block for consumers that declare they accept blocks (a ModelOutput writes the rows at their offset in
the planned slot; scores that are sums over rows accumulate) and the whole tensor for the others.
Merging during the analysis pass: a consumer that holds the tensors of one layer-local group until its
last member is scored, then derives that group's alpha and hands the merged tensors to a ModelOutput
(only for strategies whose groups never span layers, and without --preserve-mean, which needs them all).
"""

from __future__ import annotations

import dataclasses
import functools
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

import torch
from tqdm import tqdm

from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader, CheckpointWriter, TensorSpec, parse_dtype

Merge = Callable[[list[torch.Tensor]], torch.Tensor]


@dataclass
class TensorJob:
    """How one output tensor is made: which input tensors to load and the function combining them.

    A compute job's inputs reach the consumers as float32 on the compute device; a copy job's as stored,
    on the CPU (its first input is written unchanged). ``compute=None`` means: a compute job when it
    has a ``merge`` and its first input is floating point. ``merge`` receives the inputs in ``inputs``
    order and returns the output tensor.
    """

    output_name: str
    inputs: list[tuple[str, str]]  # (model id, tensor name in that model)
    merge: Merge | None = None
    dtype: torch.dtype | None = None  # output dtype; None = the first input's stored dtype or the run's dtype
    compute: bool | None = None


@dataclass
class TensorOutput:
    """A tensor a consumer wants written: checked for NaN/Inf when ``where`` names it, then written behind."""

    tensor: torch.Tensor
    write: Callable[[torch.Tensor], object]
    where: str | None = None  # "merged NAME": the start of the NaN/Inf error; None: not checked (a copy)


class Consumer(Protocol):
    """Anything fed by the executor. It must not modify the tensors in place: other consumers get them too."""

    def consume(self, job: TensorJob, tensors: list[torch.Tensor]) -> TensorOutput | None:
        """Use one job's inputs; return a tensor to write (checked and written behind) or None."""

    def finish(self) -> None:
        """Called once after the last job (e.g. to add files beside the weights)."""


class ModelOutput:
    """Consumer writing one model: each compute job's merge (or ``merge``, e.g. one alpha of a sweep).

    ``label`` ends the NaN/Inf error of a merged tensor (e.g. " (alpha 0.3)"); ``before_commit`` may
    add files to the writer's temporary folder after the last tensor.
    """

    def __init__(self, writer: CheckpointWriter, merge: Merge | None = None, label: str = "",
                 before_commit: Callable[[Path], None] | None = None):
        self.writer = writer
        self.merge = merge
        self.label = label
        self.before_commit = before_commit

    def consume(self, job: TensorJob, tensors: list[torch.Tensor]) -> TensorOutput:
        write = functools.partial(self.writer.add, job.output_name)
        if not job.compute:
            return TensorOutput(tensors[0], write)
        merge = self.merge or job.merge
        if merge is None:
            raise CMAAMError(f"{job.output_name}: a compute job without a merge function")
        return TensorOutput(merge(tensors), write, f"merged {job.output_name}{self.label}")

    def finish(self) -> None:
        if self.before_commit is not None:
            self.before_commit(self.writer.folder)


def check_finite(tensor: torch.Tensor, where: str) -> None:
    """Raise CMAAMError if a floating tensor holds NaN or Inf.

    Fast path: a finite sum proves every element finite (NaN and Inf propagate through a sum); only
    a non-finite sum (possibly an overflow of large finite values) pays for the exact, ~40x slower check.
    """
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor.sum())):
        return
    if not bool(torch.isfinite(tensor).all()):
        raise CMAAMError(f"{where}: contains NaN or Inf (pass --allow-nonfinite to merge anyway)")


def plan_specs(readers: Mapping[str, CheckpointReader], jobs: Sequence[TensorJob],
               dtype: torch.dtype | None = None) -> list[TensorSpec]:
    """Validate that every input exists with one common shape; return the output tensor specs."""
    specs = []
    for job in jobs:
        if not job.inputs:
            raise CMAAMError(f"{job.output_name}: no inputs")
        shapes = []
        for model, name in job.inputs:
            if model not in readers:
                raise CMAAMError(f"{job.output_name}: unknown model {model!r}")
            if name not in readers[model]:
                raise CMAAMError(f"{readers[model].path}: missing tensor {name!r}")
            shapes.append(readers[model].shape(name))
        if len(set(shapes)) > 1:
            detail = ", ".join(f"{readers[m].path.name}:{s}" for (m, _), s in zip(job.inputs, shapes))
            raise CMAAMError(f"shape mismatch for {job.output_name!r}: {detail}")
        first_model, first_name = job.inputs[0]
        stored = readers[first_model].dtype(first_name)
        out = job.dtype or (dtype if (dtype is not None and stored.is_floating_point) else stored)
        specs.append(TensorSpec(job.output_name, shapes[0], out))
    return specs


def _resolved(readers: Mapping[str, CheckpointReader], job: TensorJob) -> TensorJob:
    """The job with ``compute`` decided: given, else it has a merge and a floating-point first input."""
    if job.compute is not None:
        return job
    first_model, first_name = job.inputs[0]
    compute = job.merge is not None and readers[first_model].dtype(first_name).is_floating_point
    return dataclasses.replace(job, compute=compute)


def execute(readers: Mapping[str, CheckpointReader], jobs: Sequence[TensorJob], consumers: Sequence[Consumer],
            options: ExecutionOptions | None = None, *, description: str = "merging") -> None:
    """Stream ``jobs``: read each job's inputs once, feed them to every consumer, write what they return.

    Three stages overlap: the next job's inputs load and the previous output is written while the
    current job is consumed (reads, writes and torch kernels release the GIL). At most two jobs' inputs
    and two outputs are alive at a time, whatever the number of consumers. ``options`` gives the device,
    the NaN/Inf check and progress.
    """
    options = options or ExecutionOptions()
    device, allow_nonfinite, progress = resolve_device(options.device), options.allow_nonfinite, options.progress
    jobs = [_resolved(readers, job) for job in jobs]

    def load(job: TensorJob) -> list[torch.Tensor]:
        tensors = []
        for model, name in job.inputs:
            tensor = readers[model].get(name)
            if job.compute:  # convert at once so the stored-dtype copy is freed before the next input loads
                tensor = tensor.to(device=device, dtype=torch.float32)
            if not allow_nonfinite:
                check_finite(tensor, f"{readers[model].path}: {name}")
            tensors.append(tensor)
        return tensors

    with ThreadPoolExecutor(1, thread_name_prefix="cmaam-load") as loader, \
            ThreadPoolExecutor(1, thread_name_prefix="cmaam-write") as saver:
        loading = loader.submit(load, jobs[0]) if jobs else None
        writing: Future | None = None
        for index, job in enumerate(tqdm(jobs, desc=description, unit="tensor", disable=not progress, leave=False)):
            tensors = loading.result()
            if index + 1 < len(jobs):
                loading = loader.submit(load, jobs[index + 1])
            for position, consumer in enumerate(consumers):
                output = consumer.consume(job, tensors)
                if position == len(consumers) - 1:
                    tensors = None  # the inputs are freed before waiting on the previous write
                if output is None:
                    continue
                if output.where is not None and not allow_nonfinite:
                    check_finite(output.tensor, output.where)
                if writing is not None:
                    writing.result()
                writing = saver.submit(output.write, output.tensor)
                del output
            del tensors
        if writing is not None:
            writing.result()
    for consumer in consumers:
        consumer.finish()


def run_merge(
    readers: Mapping[str, CheckpointReader],
    jobs: Sequence[TensorJob],
    output: str | Path,
    options: ExecutionOptions | None = None,
    *,
    reference: str | Path | None = None,
    config: dict | None = None,
    description: str = "merging",
    before_commit: Callable[[Path], None] | None = None,
) -> Path:
    """Run ``jobs`` tensor by tensor into a new model folder at ``output`` (written atomically).

    ``options`` gives the device, the output dtype of floating tensors, the NaN/Inf check, overwrite,
    the shard size and progress. All checks that can fail on the inputs (missing tensors, shapes) run
    before anything is written; the output may not overlap any reader's folder or weight file.
    ``before_commit`` may add files to the temporary folder before it is renamed.
    """
    options = options or ExecutionOptions()
    specs = plan_specs(readers, jobs, parse_dtype(options.dtype))
    inputs = [path for reader in readers.values() for path in (reader.path, *reader.files)]
    with CheckpointWriter(output, specs, reference=reference, config=config, max_shard_size=options.max_shard_size,
                          overwrite=options.overwrite, inputs=inputs) as writer:
        execute(readers, jobs, [ModelOutput(writer, before_commit=before_commit)], options, description=description)
    return Path(output)


def resolve_device(device: str | None) -> str:
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU is a one-line error."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise CMAAMError("--device cuda was asked for but no CUDA GPU is available")
    if str(device) not in ("cpu",) and not str(device).startswith(("cuda", "mps")):
        raise CMAAMError(f"unknown device {device!r} (cpu, cuda, cuda:N or auto)")
    return str(device)
