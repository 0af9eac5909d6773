"""Streaming sharded safetensors writer: shard layout planned up front, tensors written in place."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from cmaam.io.atomic import atomic_directory
from cmaam.io.reader import SAFETENSORS_DTYPES, load_config
from cmaam.core.errors import CMAAMError
from cmaam.core.options import parse_size

WRITEBACK_BYTES = 64 << 20  # written bytes of a shard after which their writeback to storage is started
DTYPE_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
# Files copied from the reference model so the output loads like it (tokenizer, processor, templates).
REFERENCE_FILE_PATTERNS = (
    "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt", "*.model",
    "*.tiktoken", "chat_template*", "preprocessor_config.json", "processor_config.json",
    "video_preprocessor_config.json", "generation_config.json",
)


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """'bfloat16'/'bf16'/'float16'/'float32' (or a torch dtype, or None) -> torch dtype."""
    if name is None or isinstance(name, torch.dtype):
        return name
    key = str(name).lower().replace("torch.", "")
    if key not in DTYPE_NAMES:
        raise CMAAMError(f"unknown dtype {name!r} (choose bfloat16, float16 or float32)")
    return DTYPE_NAMES[key]


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and stored dtype of one output tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class _Slot:
    shard: int
    offset: int  # absolute offset in the shard file
    spec: TensorSpec
    filled: int = 0  # elements written so far (by add, add_rows or add_part)
    touched: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.spec.shape)

    @property
    def written(self) -> bool:
        return self.touched and self.filled >= self.numel


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _update_config_dtype(config: dict, dtype: torch.dtype) -> None:
    name = _dtype_name(dtype)
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = name
    if "dtype" not in config and "torch_dtype" not in config:
        config["dtype"] = name
    for value in config.values():
        if isinstance(value, dict) and ("dtype" in value or "torch_dtype" in value):
            _update_config_dtype(value, dtype)


class CheckpointWriter:
    """Write a model folder atomically from a known list of tensors, one tensor at a time.

    The safetensors headers are written when the writer opens, so each ``add`` streams one
    tensor's bytes to its place and keeps nothing in memory. Use as a context manager: on
    success the temporary folder is renamed to ``output``; on any error it is removed.
    """

    def __init__(
        self,
        output: str | Path,
        specs: Sequence[TensorSpec],
        reference: str | Path | None = None,
        config: dict | None = None,
        max_shard_size: int | str = "5GB",
        overwrite: bool = False,
        copy_reference_files: bool = True,
        inputs: Iterable[str | Path] = (),
        basename: str = "model",
    ):
        self.output = Path(output)
        self.basename = basename  # weight files: <basename>.safetensors (peft adapters: adapter_model)
        self.inputs = [*inputs, *([reference] if reference is not None else [])]
        self.specs = list(specs)
        self.reference = Path(reference) if reference is not None else None
        self.config = dict(config) if config is not None else (load_config(self.reference) if self.reference else None)
        self.max_shard_size = parse_size(max_shard_size)
        self.overwrite = overwrite
        self.copy_reference_files = copy_reference_files
        names = [spec.name for spec in self.specs]
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise CMAAMError(f"duplicate output tensor names: {', '.join(duplicates[:5])}")
        self._context = None
        self._folder: Path | None = None
        self._files: list = []
        self._unflushed: dict[int, tuple[int, int]] = {}  # shard -> byte range written since its last writeback
        self._slots: dict[str, _Slot] = {}
        self._shard_names: list[str] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "CheckpointWriter":
        self._context = atomic_directory(self.output, self.overwrite, inputs=self.inputs)
        self._folder = self._context.__enter__()
        try:
            self._plan_and_open()
        except BaseException as error:
            self._close_files(quiet=True)
            self._context.__exit__(type(error), error, error.__traceback__)
            raise
        return self

    def __exit__(self, exc_type, exc, traceback) -> bool:
        try:
            if exc_type is None:
                self._finish()
        except BaseException as error:
            self._close_files(quiet=True)
            self._context.__exit__(type(error), error, error.__traceback__)
            raise
        self._close_files(quiet=exc_type is not None)  # a failed write may fail again on close (disk full)
        return bool(self._context.__exit__(exc_type, exc, traceback))

    @property
    def folder(self) -> Path:
        """The temporary folder being written (extra files may be added here before commit)."""
        if self._folder is None:
            raise RuntimeError("writer is not open")
        return self._folder

    def _plan_and_open(self) -> None:
        shards: list[list[TensorSpec]] = [[]]
        size = 0
        for spec in self.specs:
            if shards[-1] and size + spec.nbytes > self.max_shard_size:
                shards.append([])
                size = 0
            shards[-1].append(spec)
            size += spec.nbytes
        count = len(shards)
        self._shard_names = (
            [f"{self.basename}.safetensors"] if count == 1
            else [f"{self.basename}-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        for index, (shard, name) in enumerate(zip(shards, self._shard_names)):
            header: dict = {"__metadata__": {"format": "pt"}}
            offset = 0
            for spec in shard:
                header[spec.name] = {
                    "dtype": DTYPE_CODES[spec.dtype],
                    "shape": list(spec.shape),
                    "data_offsets": [offset, offset + spec.nbytes],
                }
                offset += spec.nbytes
            encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
            encoded += b" " * (-len(encoded) % 8)
            start = 8 + len(encoded)
            file = open(self.folder / name, "wb+")
            self._files.append(file)
            file.write(struct.pack("<Q", len(encoded)))
            file.write(encoded)
            file.truncate(start + offset)
            file.flush()  # tensor data is written with os.pwrite, past the buffered header
            for spec in shard:
                self._slots[spec.name] = _Slot(index, start + header[spec.name]["data_offsets"][0], spec)

    # -- writing -----------------------------------------------------------------------------
    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor (cast to its planned dtype)."""
        slot = self._slot(name)
        if tuple(tensor.shape) != slot.spec.shape:
            raise CMAAMError(f"tensor {name!r}: shape {tuple(tensor.shape)} != planned {slot.spec.shape}")
        self._write(slot, 0, tensor)

    def add_rows(self, name: str, start: int, tensor: torch.Tensor) -> None:
        """Write rows [start, start + len(tensor)) of a planned tensor (cast to its planned dtype).

        Row blocks may come in any order; the tensor counts as written once all its rows are.
        """
        slot = self._slot(name)
        shape = slot.spec.shape
        if not shape:
            self.add(name, tensor)
            return
        if tuple(tensor.shape[1:]) != shape[1:] or tensor.dim() != len(shape) or \
                not 0 <= start <= start + tensor.shape[0] <= shape[0]:
            raise CMAAMError(f"tensor {name!r}: rows {start}:{start + (tensor.shape[0] if tensor.dim() else 0)} "
                             f"of shape {tuple(tensor.shape)} do not fit the planned {shape}")
        self._write(slot, start * math.prod(shape[1:]), tensor)

    def stored_dtype(self, name: str) -> torch.dtype:
        """The dtype planned tensor ``name`` is written in (``add`` and ``add_rows`` cast to it)."""
        return self._slot(name).spec.dtype

    def _slot(self, name: str) -> _Slot:
        slot = self._slots.get(name)
        if slot is None:
            raise CMAAMError(f"tensor {name!r} was not planned for this output")
        return slot

    def add_part(self, name: str, tensor: torch.Tensor, offset: int) -> None:
        """Write ``tensor`` (cast to the planned dtype) into planned tensor ``name`` from flat element ``offset``.

        Lets a tensor too large to assemble in memory (an MoE layer's experts stacked) be written piece by
        piece; the tensor counts as written once its pieces have covered every element.
        """
        slot = self._slot(name)
        if offset < 0 or offset + tensor.numel() > slot.numel:
            raise CMAAMError(f"tensor {name!r}: part of {tensor.numel()} elements at {offset} exceeds its {slot.numel}")
        self._write(slot, offset, tensor)

    def _write(self, slot: _Slot, element: int, tensor: torch.Tensor) -> None:
        """Write ``tensor``'s elements from flat element ``element`` of the slot (positioned writes: no seek)."""
        data = tensor.detach().to(device="cpu", dtype=slot.spec.dtype).contiguous().reshape(-1)
        offset = slot.offset + element * slot.spec.dtype.itemsize
        view = memoryview(data.view(torch.uint8).numpy()) if data.numel() else memoryview(b"")
        descriptor, done = self._files[slot.shard].fileno(), 0
        while done < len(view):
            done += os.pwrite(descriptor, view[done:], offset + done)
        slot.filled += data.numel()
        slot.touched = True
        self._write_back(slot.shard, descriptor, offset, offset + len(view))

    def _write_back(self, shard: int, descriptor: int, start: int, stop: int) -> None:
        """Every WRITEBACK_BYTES written to a shard, start writing them to storage (and let the page cache drop
        them): the fsync before the output is published then waits for little, and on a large merge the
        output's pages do not push the inputs out of the page cache. Linux (posix_fadvise) only."""
        if not hasattr(os, "posix_fadvise"):
            return
        low, high = self._unflushed.get(shard, (start, stop))
        low, high = min(low, start), max(high, stop)
        if high - low < WRITEBACK_BYTES:
            self._unflushed[shard] = (low, high)
            return
        self._unflushed.pop(shard, None)
        try:
            os.posix_fadvise(descriptor, low, high - low, os.POSIX_FADV_DONTNEED)
        except OSError:  # advice only
            pass

    def _finish(self) -> None:
        missing = [name for name, slot in self._slots.items() if not slot.written]
        if missing:
            raise CMAAMError(f"{len(missing)} planned tensors were never written (first: {missing[0]!r})")
        for file in self._files:
            file.flush()
        self._close_files()
        if len(self._shard_names) > 1:
            weight_map = {name: self._shard_names[slot.shard] for name, slot in self._slots.items()}
            total = sum(slot.spec.nbytes for slot in self._slots.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.folder / f"{self.basename}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        if self.config is not None:
            config = json.loads(json.dumps(self.config))
            floating = [s.dtype for s in self.specs if s.dtype.is_floating_point]
            if floating:
                _update_config_dtype(config, max(set(floating), key=floating.count))
            (self.folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if self.reference is not None and self.copy_reference_files:
            for path in reference_files(self.reference):
                shutil.copy2(path, self.folder / path.name)

    def _close_files(self, quiet: bool = False) -> None:
        """Close every shard file; ``quiet`` (cleaning up after an error) ignores errors of the final flush."""
        for file in self._files:
            if not file.closed:
                try:
                    file.close()
                except OSError:
                    if not quiet:
                        raise


def reference_files(folder: str | Path) -> list[Path]:
    """Tokenizer, processor, chat-template and generation-config files of a model folder."""
    folder = Path(folder)
    found: dict[str, Path] = {}
    for pattern in REFERENCE_FILE_PATTERNS:
        for path in sorted(folder.glob(pattern)):
            if path.is_file() and not path.name.endswith((".safetensors", ".bin")):
                found[path.name] = path
    return [found[name] for name in sorted(found)]


def write_state_dict(
    output: str | Path,
    tensors: dict[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    reference: str | Path | None = None,
    config: dict | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    inputs: Iterable[str | Path] = (),
) -> Path:
    """Write an in-memory state dict as a model folder (for small models and in-memory merges)."""
    items = list(tensors.items()) if isinstance(tensors, dict) else list(tensors)
    specs = [
        TensorSpec(name, tuple(t.shape), dtype if (dtype is not None and t.is_floating_point()) else t.dtype)
        for name, t in items
    ]
    with CheckpointWriter(output, specs, reference=reference, config=config, max_shard_size=max_shard_size,
                          overwrite=overwrite, inputs=inputs) as writer:
        for name, tensor in items:
            writer.add(name, tensor)
    return Path(output)
