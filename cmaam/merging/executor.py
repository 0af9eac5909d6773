"""Streaming merge engine: load one tensor per input, compute, write, repeat. Shared by every merge CLI."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from tqdm import tqdm

from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader, CheckpointWriter, TensorSpec, parse_dtype


@dataclass
class TensorJob:
    """How one output tensor is made: which input tensors to load and the function combining them.

    ``merge`` receives the loaded inputs (in ``inputs`` order, float32 on the compute device) and
    returns the output tensor. A job with ``merge=None`` copies its first input unchanged.
    """

    output_name: str
    inputs: list[tuple[str, str]]  # (model id, tensor name in that model)
    merge: Callable[[list[torch.Tensor]], torch.Tensor] | None = None
    dtype: torch.dtype | None = None  # output dtype; None = the first input's stored dtype or the run's dtype


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
    dtype, allow_nonfinite, overwrite = parse_dtype(options.dtype), options.allow_nonfinite, options.overwrite
    max_shard_size, progress = options.max_shard_size, options.progress
    specs = plan_specs(readers, jobs, dtype)
    device = resolve_device(options.device)

    def load(job: TensorJob) -> tuple[list[torch.Tensor], bool]:
        first_model, first_name = job.inputs[0]
        merging = job.merge is not None and readers[first_model].dtype(first_name).is_floating_point
        tensors = []
        for model, name in job.inputs:
            tensor = readers[model].get(name)
            if merging:  # convert at once so the stored-dtype copy is freed before the next input loads
                tensor = tensor.to(device=device, dtype=torch.float32)
            if not allow_nonfinite:
                check_finite(tensor, f"{readers[model].path}: {name}")
            tensors.append(tensor)
        return tensors, merging

    # Three-stage pipeline: the next job's inputs load and the previous result is written while
    # this one is merged (reads, writes and torch kernels release the GIL). At most two jobs'
    # inputs and one result are alive at a time.
    inputs = [path for reader in readers.values() for path in (reader.path, *reader.files)]
    with CheckpointWriter(output, specs, reference=reference, config=config, max_shard_size=max_shard_size,
                          overwrite=overwrite, inputs=inputs) as writer, \
            ThreadPoolExecutor(1, thread_name_prefix="cmaam-load") as loader, \
            ThreadPoolExecutor(1, thread_name_prefix="cmaam-write") as saver:
        loading = loader.submit(load, jobs[0]) if jobs else None
        writing = None
        for index, job in enumerate(tqdm(jobs, desc=description, unit="tensor", disable=not progress, leave=False)):
            tensors, merging = loading.result()
            if index + 1 < len(jobs):
                loading = loader.submit(load, jobs[index + 1])
            if not merging:
                result = tensors[0]
            else:
                result = job.merge(tensors)
                if not allow_nonfinite:
                    check_finite(result, f"merged {job.output_name}")
            del tensors
            if writing is not None:
                writing.result()
            writing = saver.submit(writer.add, job.output_name, result)
            del result
        if writing is not None:
            writing.result()
        if before_commit is not None:
            before_commit(writer.folder)
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
