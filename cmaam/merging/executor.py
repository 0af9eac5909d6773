"""The one streaming executor: each input tensor is read once and fed to every consumer of the run.

A run is a stream of ``TensorJob``s (one per output tensor: the inputs it reads and how they combine).
The executor loads the next read in a background thread while the current one is consumed (prefetch),
checks it for NaN/Inf, and hands the same tensors to every ``Consumer``: one ``ModelOutput`` per model
written (a merge, a soup, a mergekit config; a sweep has one per alpha), the analysis
(``cmaam.alignment.scores.analyzer.PairScorer``), checks. The tensors a consumer returns are checked and
written behind in one writer thread while the next ones are computed; a merge a consumer returns as
``TensorOutput.compute`` is made on CPU in the merge threads (``merge_threads``), several at once. When every
consumer of a job takes its inputs as stored (``accepts_stored``), the merge threads also convert them, and
the mapped pages they read are dropped only after their outputs are written. Prefetch, device, dtype,
NaN/Inf checks, row blocks, progress, merge threads and write-behind live here and nowhere else.

Memory budget (``ExecutionOptions.max_memory``). A compute job larger than one compute chunk
(``COMPUTE_CHUNK_ELEMENTS``) whose consumers all accept row blocks (``accepts_blocks``) streams chunk by
chunk: the loader views the next chunk's rows in the mapped input files (converting them to float32 unless the
merge threads do) while the current chunk is consumed (``consume_block``), so a few float32 chunks of about a
million elements are all that is held per input. The budget sets the read-ahead: the kernel is asked to read a
row block of at most ``max_memory / BLOCK_SHARE`` bytes (all its inputs, as float32) when its first chunk is
loaded, and the block's mapped pages are dropped after its last; copy jobs are read and written in such
blocks. A ModelOutput writes each merged chunk at its offset in the planned slot; scores accumulate over the
chunks. Chunk boundaries depend on the tensor's shape only, never on the budget, so everything computed from
chunks is the same whatever ``max_memory`` is. Jobs whose merge needs the whole tensor (slerp, TIES' global
top-k, ...: ``TensorJob.row_local`` False) are loaded whole.

NaN/Inf. Every input is checked once as read, except the inputs of a job whose every consumer writes a merge
that is NaN/Inf wherever an input is (``Consumer.checks_inputs``: linear merges, lerps): there the outputs'
check covers them, and the inputs are checked only to name the culprit when an output fails.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import gc
import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator, Mapping, Protocol, Sequence

import torch
from tqdm import tqdm

from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions, parse_size
from cmaam.io import CheckpointReader, CheckpointWriter, TensorSpec, parse_dtype

Merge = Callable[[list[torch.Tensor]], torch.Tensor]
COMPUTE_CHUNK_ELEMENTS = 1 << 20  # elements of one compute chunk (4 MiB as float32: stays in the CPU cache)
BLOCK_SHARE = 4  # one row block (all inputs of a job, float32) takes at most max_memory / BLOCK_SHARE
WRITE_QUEUE = 16  # outputs being made or written behind at most
WRITE_BEHIND_BYTES = 64 << 20  # ... and their bytes (a larger output waits for the ones before it)


@dataclass
class TensorJob:
    """How one output tensor is made: which input tensors to load and the function combining them.

    A compute job's inputs reach the consumers as float32 on the compute device; a copy job's as stored,
    on the CPU (its first input is written unchanged). ``compute=None`` means: a compute job when it
    has a ``merge`` and its first input is floating point. ``merge`` receives the inputs in ``inputs``
    order and returns the output tensor. ``row_local``: output rows [a, b) depend only on input rows
    [a, b) (elementwise merges, copies), so a large tensor may be merged in row blocks.
    ``propagates_nonfinite``: a NaN or Inf in any input gives one in the merge (plain weighted sums), so a
    consumer writing the merge may check its inputs through it (``Consumer.checks_inputs``).
    ``takes_stored``: ``merge`` takes inputs in any floating dtype, so inputs handed on as stored
    (``Consumer.accepts_stored``) reach it unconverted (MergeMethod's flag).
    """

    output_name: str
    inputs: list[tuple[str, str]]  # (model id, tensor name in that model)
    merge: Merge | None = None
    dtype: torch.dtype | None = None  # output dtype; None = the first input's stored dtype or the run's dtype
    compute: bool | None = None
    row_local: bool = False
    propagates_nonfinite: bool = False  # NaN/Inf in an input makes the merge NaN/Inf there (MergeMethod's flag)
    takes_stored: bool = False  # merge converts its inputs itself (MergeMethod's flag)


@dataclass(frozen=True)
class Block:
    """Rows [start, stop) of the first dimension of a job's tensors, out of ``rows``."""

    start: int
    stop: int
    rows: int

    @property
    def last(self) -> bool:
        """The block ending the tensor (consumers finish a tensor's accumulation here)."""
        return self.stop == self.rows


def chunk_rows(shape: Sequence[int]) -> int:
    """Rows of one compute chunk of a tensor: about COMPUTE_CHUNK_ELEMENTS elements, at least one row."""
    width = math.prod(shape[1:]) if len(shape) > 1 else 1
    return max(1, COMPUTE_CHUNK_ELEMENTS // max(1, width))


def row_chunks(shape: Sequence[int], start: int = 0, stop: int | None = None) -> list[Block]:
    """The compute chunks of rows [start, stop) of a tensor (start on a chunk boundary); fixed by the shape alone."""
    rows = shape[0] if len(shape) else 1
    stop = rows if stop is None else stop
    step = chunk_rows(shape)
    return [Block(row, min(row + step, stop), rows) for row in range(start, stop, step)]


@dataclass
class TensorOutput:
    """A tensor a consumer wants written: checked for NaN/Inf when ``where`` names it and written, both behind
    (in the writer thread, while the next chunk is computed).

    A merge (of a whole tensor or of a chunk) may be given as ``compute`` instead of ``tensor``: on CPU it is then
    made behind too, in the merge threads (``merge_threads``), several at once, while the run reads on.
    """

    tensor: torch.Tensor | None
    write: Callable[[torch.Tensor], object]
    where: str | None = None  # "merged NAME": the start of the NaN/Inf error; None: not checked (a copy)
    dtype: torch.dtype | None = None  # the dtype it is stored in: converted first, so the check sees what is written
    compute: Callable[[], torch.Tensor] | None = None  # makes ``tensor`` (a pure function of tensors it holds)
    holds: int = 0  # bytes ``compute`` holds until it has run (its inputs)

    def then(self, change: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the tensor by ``change(tensor)``: now, or right after ``compute`` when it is still to run."""
        if self.compute is None:
            self.tensor = change(self.tensor)
        else:
            self.compute = functools.partial(_composed, change, self.compute)


def merged(merge: Merge, tensors: Sequence[torch.Tensor], convert: bool = True) -> torch.Tensor:
    """``merge`` of the inputs as float32 (inputs given as stored are converted here, in the merge thread), or
    as given when the merge converts them itself (``TensorJob.takes_stored``)."""
    return merge([tensor.float() for tensor in tensors] if convert else list(tensors))


def _composed(outer: Callable[[torch.Tensor], torch.Tensor], inner: Callable[[], torch.Tensor]) -> torch.Tensor:
    return outer(inner())


class Consumer(Protocol):
    """Anything fed by the executor. It must not modify the tensors in place: other consumers get them too.

    A consumer that can work on row blocks also has ``accepts_blocks(job) -> bool`` and
    ``consume_block(job, block, tensors)``, called once per compute chunk, in row order, for the jobs
    it accepts (when every consumer of the run accepts them); otherwise it gets whole tensors.
    ``consume`` and ``consume_block`` may return one TensorOutput, several (an iterable) or None.
    A consumer may also have ``accepts_stored(job) -> bool``: True when it takes a compute job's inputs in
    their stored dtype (then on CPU the loader hands on views of the mapped files, unconverted).
    A consumer may also have ``checks_inputs(job) -> bool``: True when every output it makes of the job is
    NaN/Inf wherever an input is, and checked (a plain weighted sum, written). When all consumers say so, the
    executor checks the job's outputs only, and its inputs only to name the culprit if an output fails.
    """

    def consume(self, job: TensorJob, tensors: list[torch.Tensor]) -> TensorOutput | Iterable[TensorOutput] | None:
        """Use one job's inputs; return tensors to write (checked and written behind) or None."""

    def finish(self) -> None:
        """Called once after the last job (e.g. to add files beside the weights)."""


class ModelOutput:
    """Consumer writing one model: each compute job's merge (or ``merge``, e.g. one alpha of a sweep).

    ``label`` ends the NaN/Inf error of a merged tensor (e.g. " (alpha 0.3)"); ``before_commit`` may
    add files to the writer's temporary folder after the last tensor. ``row_local`` and
    ``propagates_nonfinite`` describe ``merge`` (default: each job's own flags, for the job's merge). Each
    merge is returned as a ``TensorOutput.compute`` of the inputs as given (stored or float32): made behind.
    """

    def __init__(self, writer: CheckpointWriter, merge: Merge | None = None, label: str = "",
                 before_commit: Callable[[Path], None] | None = None, row_local: bool | None = None,
                 propagates_nonfinite: bool | None = None):
        self.writer = writer
        self.merge = merge
        self.label = label
        self.before_commit = before_commit
        self.row_local = row_local
        self.propagates_nonfinite = propagates_nonfinite

    def _merge_flag(self, own: bool | None, of_job: bool) -> bool:
        """A property of the merge this output applies: its own merge's when it has one, else the job's."""
        if self.merge is not None and own is not None:
            return own
        return self.merge is None and of_job

    def checks_inputs(self, job: TensorJob) -> bool:
        return bool(job.compute) and self._merge_flag(self.propagates_nonfinite, job.propagates_nonfinite)

    def accepts_blocks(self, job: TensorJob) -> bool:
        return not job.compute or self._merge_flag(self.row_local, job.row_local)

    def accepts_stored(self, job: TensorJob) -> bool:
        return bool(job.compute)

    def consume(self, job: TensorJob, tensors: list[torch.Tensor]) -> TensorOutput:
        return self._output(job, tensors, functools.partial(self.writer.add, job.output_name))

    def consume_block(self, job: TensorJob, block: Block, tensors: list[torch.Tensor]) -> TensorOutput:
        return self._output(job, tensors, functools.partial(self.writer.add_rows, job.output_name, block.start))

    def _output(self, job: TensorJob, tensors: list[torch.Tensor], write: Callable) -> TensorOutput:
        if not job.compute:
            return TensorOutput(tensors[0], write)
        merge = self.merge or job.merge
        if merge is None:
            raise CMAAMError(f"{job.output_name}: a compute job without a merge function")
        # made behind, in parallel with the next ones; inputs as stored (accepts_stored) are converted there,
        # unless the job's merge takes them as they are
        compute = functools.partial(merged, merge, tensors, not self._merge_flag(None, job.takes_stored))
        return TensorOutput(None, write, f"merged {job.output_name}{self.label}",
                            self.writer.stored_dtype(job.output_name), compute,
                            sum(tensor.numel() * (4 + (tensor.dtype != torch.float32) * tensor.element_size())
                                for tensor in tensors))  # float32 copies, and the stored tensors they come from

    def finish(self) -> None:
        if self.before_commit is not None:
            self.before_commit(self.writer.folder)


def check_finite(tensor: torch.Tensor, where: str) -> None:
    """Raise CMAAMError if a floating tensor holds NaN or Inf.

    One fused min/max reduction, exact and without a copy: NaN propagates through both, and an infinity is
    the minimum or the maximum, so the tensor is finite exactly when both are (about 15x faster on 16-bit
    tensors than summing them in float32).
    """
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    low, high = torch.aminmax(tensor)
    if not bool(torch.isfinite(low) & torch.isfinite(high)):
        raise CMAAMError(f"{where}: contains NaN or Inf (pass --allow-nonfinite to merge anyway)")


def check_rows(reader: CheckpointReader, name: str, where: str) -> None:
    """``check_finite`` on a stored tensor, read a few compute chunks of rows at a time where the reader can."""
    shape = reader.shape(name)
    if not shape or not getattr(reader, "reads_rows", lambda name: False)(name):
        check_finite(reader.get(name), where)
        return
    step = chunk_rows(shape) * 16
    for start in range(0, shape[0], step):
        check_finite(reader.get_rows(name, start, min(start + step, shape[0])), where)


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


def _row_blocks(readers: Mapping[str, CheckpointReader], job: TensorJob, consumers: Sequence[Consumer],
                budget: int) -> list[Block | None]:
    """How a job is read: [None] (whole) or its row blocks, each a whole number of compute chunks.

    Row blocks for a job spanning more than one compute chunk that every consumer accepts in blocks and every
    reader can read by rows (``CheckpointReader.reads_rows``; views and adapted tensors are read whole);
    a block's inputs take at most ``budget / BLOCK_SHARE`` bytes as float32 (at least one chunk).
    """
    model, name = job.inputs[0]
    shape = readers[model].shape(name)
    if not shape or len(row_chunks(shape)) < 2:
        return [None]
    if not all(getattr(consumer, "accepts_blocks", lambda job: False)(job) for consumer in consumers):
        return [None]
    if not all(getattr(readers[model], "reads_rows", lambda name: False)(name) for model, name in job.inputs):
        return [None]
    step = chunk_rows(shape)
    row_bytes = max(1, math.prod(shape[1:]) * 4 * len(job.inputs))
    rows = max(step, budget // BLOCK_SHARE // row_bytes // step * step)
    return [Block(start, min(start + rows, shape[0]), shape[0]) for start in range(0, shape[0], rows)]


@dataclass(frozen=True)
class Read:
    """One load of the stream: job ``index``'s inputs, whole (``block`` None) or rows ``block`` (a compute chunk of
    a compute job, a row block of a copy job); ``ahead``: the row block whose read-ahead starts with this load.
    Mapped pages are dropped once per row block, not per chunk: each drop flushes the TLB of every core."""

    index: int
    block: Block | None
    ahead: Block | None = None
    done: Block | None = None  # the row block whose mapped pages are dropped after this load (its last chunk)


def _reads(readers: Mapping[str, CheckpointReader], index: int, job: TensorJob, block: Block | None) -> list[Read]:
    """The loads of one job's row block: a compute job's one per compute chunk (converted to float32 in the loader
    while the previous chunk is consumed), a copy job's or a whole tensor's one."""
    if block is None or not job.compute:
        return [Read(index, block)]
    model, name = job.inputs[0]
    pieces = row_chunks(readers[model].shape(name), block.start, block.stop)
    return [Read(index, piece, block if number == 0 else None, block if number == len(pieces) - 1 else None)
            for number, piece in enumerate(pieces)]


ALLOCATOR_SETTINGS = {-3: 32 << 20, -1: 1 << 30}  # glibc mallopt: M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB


@functools.cache
def tune_allocator() -> bool:
    """Let glibc's malloc keep and reuse the few-MiB buffers of compute chunks (once per process).

    By default a freed chunk buffer is often handed back to the kernel, so the next one is page-faulted in
    afresh: 5-8 page faults per chunk, a third of a linear merge's time. Fixing the mmap threshold at
    32 MiB (larger buffers are still mapped and unmapped) and trimming only past 1 GiB keeps them: peak
    memory is unchanged. Without glibc this does nothing. Returns whether the settings were applied.
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(option, value) == 1 for option, value in ALLOCATOR_SETTINGS.items())


def _checked(output: TensorOutput, check: bool) -> torch.Tensor:
    """An output as it is stored: computed (``compute``), converted to its stored dtype and checked for NaN/Inf
    (a value beyond float16's range is caught as the Inf it becomes)."""
    tensor = output.compute() if output.compute is not None else output.tensor
    if output.dtype is not None and tensor.dtype != output.dtype:
        tensor = tensor.to(output.dtype)
    if check and output.where is not None:
        check_finite(tensor, output.where)
    return tensor


def _check_and_write(output: TensorOutput, check: bool, made: Future | None = None) -> None:
    """The writer thread's part of an output: ``_checked`` (or its result ``made`` in a merge thread) written. An
    error reaches the run when it waits on this write."""
    output.write(_checked(output, check) if made is None else made.result())


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a run: its collections walk every object torch created at import,
    a few per cent of a merge, and the run makes no cycles worth collecting. Restored as it was afterwards."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


PIPELINE_THREADS = 3  # threads of a run that call torch kernels at once: the loader, the main one, the writer


@contextlib.contextmanager
def kernel_threads() -> Iterator[None]:
    """Give torch's kernels a third of the cores for a run (at least one), restored afterwards; left alone when
    the user chose a count (OMP_NUM_THREADS).

    The run's three threads call kernels at once, each with its own OpenMP team: with a team of every core
    each, 3x more threads than cores wait for each other at every kernel's barrier. On 2 cores one thread
    per kernel makes a linear merge 8% and TIES 10% faster (docs/performance.md).
    """
    previous = torch.get_num_threads()  # also sets this thread's count up before the helpers start theirs
    if "OMP_NUM_THREADS" in os.environ:
        yield
        return
    torch.set_num_threads(max(1, available_cores() // PIPELINE_THREADS))
    _THREADS_OUTSIDE.append(previous)
    try:
        yield
    finally:
        _THREADS_OUTSIDE.pop()
        torch.set_num_threads(previous)


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def merge_threads() -> int:
    """How many merges run at once: the cores over torch's threads per kernel (called inside ``kernel_threads``),
    so the merges' kernels together use about every core: 2 on 2 cores, 3 on 16 (5 threads each), and one
    per core when the user set one thread per kernel (OMP_NUM_THREADS=1)."""
    return max(1, available_cores() // max(1, torch.get_num_threads()))


_THREADS_OUTSIDE: list[int] = []  # torch's thread count before each active kernel_threads (innermost last)


@contextlib.contextmanager
def wide_kernels() -> Iterator[None]:
    """Inside a run, give one large compute-bound kernel (a Gram matrix's matmul, an eigendecomposition) the
    threads torch has outside runs: it scales with cores, unlike the many small memory-bound kernels that
    ``kernel_threads`` is for. Outside a run (or with OMP_NUM_THREADS set) this changes nothing."""
    if not _THREADS_OUTSIDE or torch.get_num_threads() == _THREADS_OUTSIDE[-1]:
        yield
        return
    narrow = torch.get_num_threads()
    torch.set_num_threads(_THREADS_OUTSIDE[-1])
    try:
        yield
    finally:
        torch.set_num_threads(narrow)


def _outputs(result: TensorOutput | Iterable[TensorOutput] | None) -> Iterable[TensorOutput]:
    if result is None:
        return ()
    if isinstance(result, TensorOutput):
        return (result,)
    return result


def execute(readers: Mapping[str, CheckpointReader], jobs: Sequence[TensorJob], consumers: Sequence[Consumer],
            options: ExecutionOptions | None = None, *, description: str = "merging",
            checked: Collection[tuple[str, str]] = ()) -> None:
    """Stream ``jobs``: read each job's inputs once, feed them to every consumer, write what they return.

    Three stages overlap: the next read (a job, or a row block of a large one) loads and previous outputs
    are written while the current one is consumed (reads, writes and torch kernels release the GIL). At
    most two reads and a few outputs are alive at a time, whatever the number of consumers. ``options``
    gives the device, the memory budget, the NaN/Inf check and progress. ``checked``: (model, name) inputs
    an earlier pass of the same run already checked for NaN/Inf (not checked again).
    """
    options = options or ExecutionOptions()
    device, allow_nonfinite, progress = resolve_device(options.device), options.allow_nonfinite, options.progress
    tune_allocator()
    budget = parse_size(options.max_memory)
    behind = max(WRITE_BEHIND_BYTES, budget // BLOCK_SHARE)  # outputs (and merges' inputs) held behind at most
    jobs = [_resolved(readers, job) for job in jobs]
    reads = [read for index, job in enumerate(jobs) for block in _row_blocks(readers, job, consumers, budget)
             for read in _reads(readers, index, job, block)]

    def must_check(model: str, name: str) -> bool:
        return not allow_nonfinite and (model, name) not in checked

    # jobs whose inputs are checked through their outputs (each consumer's outputs are NaN/Inf where an input is)
    through_outputs = [not allow_nonfinite and bool(consumers) and all(
        getattr(consumer, "checks_inputs", lambda job: False)(job) for consumer in consumers) for job in jobs]

    # compute jobs whose consumers all take the inputs as stored: the merge threads convert them
    as_stored = [device == "cpu" and bool(job.compute) and bool(consumers) and all(
        getattr(consumer, "accepts_stored", lambda job: False)(job) for consumer in consumers) for job in jobs]

    def mapped(reader: CheckpointReader, name: str) -> bool:
        """Whether a compute input is viewed in the mapped file (its pages released once converted: by the loader,
        or, as stored, by the merge threads, after the read's outputs are written)."""
        return hasattr(reader, "view_rows") and reader.reads_rows(name)

    def release(read: Read) -> None:
        """Drop the mapped pages of a compute read's viewed inputs, once per row block (or whole tensor)."""
        if read.block is not None and read.done is None:
            return
        for model, name in jobs[read.index].inputs:
            if mapped(readers[model], name):
                readers[model].release_rows(name, *(() if read.done is None else (read.done.start, read.done.stop)))

    def load(read: Read) -> list[torch.Tensor]:
        job = jobs[read.index]
        tensors = []
        for model, name in job.inputs:
            reader = readers[model]
            rows = () if read.block is None else (read.block.start, read.block.stop)
            if read.ahead is not None and hasattr(reader, "prefetch_rows"):  # a block's first chunk: read ahead
                reader.prefetch_rows(name, read.ahead.start, read.ahead.stop)
            view = job.compute and mapped(reader, name)  # only compute inputs: their conversion copies them
            if view:
                tensor = reader.view_rows(name, *rows)
            elif rows:  # owned memory (a copy job's rows: the writer may still hold them)
                tensor = reader.get_rows(name, *rows)
            else:  # whole, as the reader gives it (an adapter computes its patched tensors here)
                tensor = reader.get(name)
            if must_check(model, name) and not through_outputs[read.index]:
                check_finite(tensor, f"{reader.path}: {name}")
            if job.compute and not as_stored[read.index]:
                tensor = tensor.to(device=device, dtype=torch.float32, copy=view)
            tensors.append(tensor)
        if job.compute and not as_stored[read.index]:
            release(read)
        return tensors

    with gc_paused(), kernel_threads(), ThreadPoolExecutor(1, thread_name_prefix="cmaam-load") as loader, \
            ThreadPoolExecutor(1, thread_name_prefix="cmaam-write") as saver, \
            ThreadPoolExecutor(merge_threads(), thread_name_prefix="cmaam-merge") as merger, \
            tqdm(total=len(jobs), desc=description, unit="tensor", disable=not progress, leave=False) as bar:
        writing: collections.deque[tuple[Future, int, int]] = collections.deque()  # (write, bytes, job index)

        def wait() -> None:
            """Wait for the oldest write; when its output check fails and the job's inputs were left to it, name
            the input holding the NaN/Inf (the error a check of the inputs would have given)."""
            future, _, index = writing.popleft()
            try:
                future.result()
            except CMAAMError:
                if through_outputs[index]:
                    for model, name in jobs[index].inputs:
                        if must_check(model, name):
                            check_rows(readers[model], name, f"{readers[model].path}: {name}")
                raise

        def emit(result: TensorOutput | Iterable[TensorOutput] | None, index: int) -> None:
            for output in _outputs(result):
                if output.compute is not None and device != "cpu":  # a GPU runs one kernel at a time anyway
                    output.tensor, output.compute = output.compute(), None
                tensor = output.tensor
                size = output.holds if output.compute is not None else tensor.numel() * tensor.element_size()
                while writing and (len(writing) >= WRITE_QUEUE
                                   or sum(queued for _, queued, _ in writing) + size > behind):
                    wait()
                made = merger.submit(_checked, output, not allow_nonfinite) if output.compute is not None else None
                writing.append((saver.submit(_check_and_write, output, not allow_nonfinite, made), size, index))
                del output, made, tensor

        loading = loader.submit(load, reads[0]) if reads else None
        for position, read in enumerate(reads):
            tensors = loading.result()
            if position + 1 < len(reads):
                loading = loader.submit(load, reads[position + 1])
            index, block, job = read.index, read.block, jobs[read.index]
            for number, consumer in enumerate(consumers):
                result = (consumer.consume(job, tensors) if block is None
                          else consumer.consume_block(job, block, tensors))
                if number == len(consumers) - 1:
                    tensors = None  # the inputs are freed before waiting on previous writes
                emit(result, index)
                del result
            if as_stored[index]:  # after the writes of its outputs, which wait for the merges reading the views
                writing.append((saver.submit(release, read), 0, index))
            if block is None or block.last:
                bar.update(1)
        while writing:
            wait()
    for consumer in consumers:
        consumer.finish()


def open_writer(readers: Mapping[str, CheckpointReader], jobs: Sequence[TensorJob], output: str | Path,
                options: ExecutionOptions, *, reference: str | Path | None = None,
                config: dict | None = None) -> CheckpointWriter:
    """The writer of ``jobs``' outputs (enter it to open): every input exists with one shape, checked before
    anything is written; the output may not overlap any reader's folder or weight file."""
    specs = plan_specs(readers, jobs, parse_dtype(options.dtype))
    inputs = [path for reader in readers.values() for path in (reader.path, *reader.files)]
    return CheckpointWriter(output, specs, reference=reference, config=config, max_shard_size=options.max_shard_size,
                            overwrite=options.overwrite, inputs=inputs)


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
    the shard size, the memory budget and progress. All checks that can fail on the inputs (missing
    tensors, shapes) run before anything is written; the output may not overlap any reader's folder or
    weight file. ``before_commit`` may add files to the temporary folder before it is renamed.
    """
    options = options or ExecutionOptions()
    with open_writer(readers, jobs, output, options, reference=reference, config=config) as writer:
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
