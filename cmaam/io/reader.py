"""Lazy reader for Hugging Face model folders: one tensor in memory at a time."""

from __future__ import annotations

import json
import mmap
import os
import struct
import sys
from pathlib import Path
from typing import Iterator, Mapping

import torch
from safetensors import safe_open

from cmaam.core.errors import CMAAMError

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Tensor data is read with os.preadv (little-endian hosts with preadv); elsewhere through safetensors' mmap.
POSITIONED_READS = hasattr(os, "preadv") and sys.byteorder == "little"
# view_rows maps files where pages can be released again (madvise); elsewhere it reads like get_rows.
MAPPED_VIEWS = sys.byteorder == "little" and hasattr(mmap.mmap, "madvise") and hasattr(mmap, "MADV_DONTNEED")


def _advise(mapping: mmap.mmap, advice: str, begin: int, end: int) -> None:
    """madvise the whole pages covering file bytes [begin, end) of a mapping (ignored where unsupported)."""
    if end <= begin or not hasattr(mmap, advice):
        return
    first = begin - begin % mmap.PAGESIZE
    try:
        mapping.madvise(getattr(mmap, advice), first, end - first)
    except (OSError, ValueError):  # advice only: a kernel that refuses it changes speed, never results
        pass


def load_config(path: str | Path) -> dict:
    """Read config.json of a model folder (a clear error when missing or malformed)."""
    from cmaam.io.files import read_json

    if not (Path(path) / "config.json").is_file():
        raise CMAAMError(f"{path}: no config.json (not a Hugging Face model folder)")
    return read_json(Path(path) / "config.json")


class TensorNames:
    """The name side of the reader protocol (keys, ``in``, ``len``, iteration) over ``self._location``: tensor name
    -> where its data is (a file, or for a view the name of the tensor behind it)."""

    _location: Mapping[str, object]

    def keys(self) -> list[str]:
        """Tensor names in order."""
        return list(self._location)

    def __contains__(self, name: str) -> bool:
        return name in self._location

    def __len__(self) -> int:
        return len(self._location)

    def __iter__(self) -> Iterator[str]:
        return iter(self._location)


class CheckpointReader(TensorNames):
    """Tensor names, shapes and dtypes of a model folder, with tensors loaded on demand.

    Safetensors files are memory-mapped through ``safe_open``; pickled ``.bin`` checkpoints are
    refused unless ``allow_pickle`` (then loaded with ``torch.load(weights_only=True)``).
    """

    def __init__(self, path: str | Path, allow_pickle: bool = False, require_config: bool = True):
        self.path = Path(path)
        if not self.path.exists():
            raise CMAAMError(f"{self.path}: no such model folder")
        if not self.path.is_dir():
            raise CMAAMError(f"{self.path}: not a folder (expected a Hugging Face model folder)")
        self.config: dict = load_config(self.path) if require_config or (self.path / "config.json").exists() else {}
        self._location: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}
        self._raw: dict[Path, tuple[object, int, dict]] = {}  # file -> (unbuffered file, data start, header)
        self._maps: dict[Path, tuple[mmap.mmap, torch.Tensor] | None] = {}  # file -> (mapping, bytes) or None
        self._pickled: dict[Path, dict[str, torch.Tensor]] = {}
        self._is_pickle = False
        files = self._weight_files(allow_pickle)
        for file in files:
            if file.suffix == ".safetensors":
                try:
                    handle = safe_open(str(file), framework="pt")
                except Exception as error:  # safetensors raises its own error types
                    raise CMAAMError(f"{file}: unreadable safetensors file ({error})") from None
                self._handles[file] = handle
                names = handle.keys()
            else:
                names = self._load_pickle(file).keys()
            for name in names:
                if name in self._location:
                    raise CMAAMError(f"{self.path}: tensor {name!r} appears in two weight files")
                self._location[name] = file

    # -- discovery ---------------------------------------------------------------------------
    def _weight_files(self, allow_pickle: bool) -> list[Path]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            return self._files_from_index(index, allow_pickle)
        single = self.path / "model.safetensors"
        if single.is_file():
            return [single]
        others = sorted(self.path.glob("*.safetensors"))
        if others:
            return others
        pickles = sorted(p for p in self.path.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
        pickle_index = self.path / "pytorch_model.bin.index.json"
        if pickles or pickle_index.is_file():
            if not allow_pickle:
                raise CMAAMError(
                    f"{self.path}: weights are pickled ({(pickles or [pickle_index])[0].name}); pickles can run code, "
                    "so they are refused unless you pass --allow-pickle"
                )
            self._is_pickle = True
            return self._files_from_index(pickle_index, allow_pickle) if pickle_index.is_file() else pickles
        raise CMAAMError(f"{self.path}: no weights found (expected model.safetensors or model.safetensors.index.json)")

    def _files_from_index(self, index: Path, allow_pickle: bool) -> list[Path]:
        """The weight files an index names: plain relative names inside the model folder; a file that is
        not .safetensors only with ``allow_pickle`` (it would be torch-loaded)."""
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise CMAAMError(f"{index}: malformed index (expected a 'weight_map' object)") from None
        if not isinstance(weight_map, dict):
            raise CMAAMError(f"{index}: malformed index ('weight_map' must map tensor names to file names)")
        bad = [value for value in weight_map.values() if not isinstance(value, str) or not value]
        if bad:
            raise CMAAMError(f"{index}: malformed index (weight_map values must be file names, got {bad[0]!r})")
        folder = os.path.realpath(self.path)
        files = []
        for name in dict.fromkeys(weight_map.values()):
            file = self.path / name
            # The file itself may be a link (the Hugging Face cache links snapshots to blobs);
            # its folder may not lead out of the model folder.
            if Path(name).is_absolute() or ".." in Path(name).parts or \
                    not os.path.join(os.path.realpath(file.parent), "").startswith(os.path.join(folder, "")):
                raise CMAAMError(f"{index}: shard {name!r} lies outside the model folder; refusing to read it")
            if file.suffix != ".safetensors" and not allow_pickle:
                raise CMAAMError(f"{index}: shard {name} is not a .safetensors file; it would be unpickled, which "
                                 "can run code, so it is refused unless you pass --allow-pickle")
            if not file.is_file():
                raise CMAAMError(f"{index}: shard {name} is listed but missing")
            files.append(file)
        return files

    def _load_pickle(self, file: Path) -> dict[str, torch.Tensor]:
        if file not in self._pickled:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as error:
                raise CMAAMError(f"{file}: cannot load with weights_only=True ({error})") from None
            if not isinstance(state, dict):
                raise CMAAMError(f"{file}: expected a state dict of tensors")
            self._pickled[file] = state
        return self._pickled[file]

    # -- queries -----------------------------------------------------------------------------
    @property
    def files(self) -> list[Path]:
        """The weight files read (inputs of anything written from this model)."""
        return list(dict.fromkeys(self._location.values()))

    @property
    def reference_folder(self) -> Path:
        """The folder whose config, tokenizer and processor files describe this model (an adapter's base)."""
        return self.path

    @property
    def model_type(self) -> str | None:
        """The ``model_type`` of config.json, or None."""
        return self.config.get("model_type")

    def _file(self, name: str) -> Path:
        try:
            return self._location[name]
        except KeyError:
            raise CMAAMError(f"{self.path}: tensor {name!r} not found") from None

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of a tensor, read from the header without loading data."""
        file = self._file(name)
        if file in self._handles:
            return tuple(self._handles[file].get_slice(name).get_shape())
        return tuple(self._load_pickle(file)[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        """Stored dtype of a tensor, read from the header without loading data."""
        file = self._file(name)
        if file in self._handles:
            code = self._handles[file].get_slice(name).get_dtype()
            if code not in SAFETENSORS_DTYPES:
                raise CMAAMError(f"{file}: tensor {name!r} has unsupported dtype {code}")
            return SAFETENSORS_DTYPES[code]
        return self._load_pickle(file)[name].dtype

    def numel(self, name: str) -> int:
        """Element count of a tensor, from its shape."""
        count = 1
        for size in self.shape(name):
            count *= size
        return count

    def get(self, name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        """Load one tensor (optionally moved and cast)."""
        tensor = self.get_rows(name)
        if dtype is not None or str(device) != "cpu":
            tensor = tensor.to(device=device, dtype=dtype)
        return tensor

    def reads_rows(self, name: str) -> bool:
        """Whether ``get_rows`` gives rows of what ``get`` returns (a view or an adapter that computes a
        tensor says no: the executor then reads it whole)."""
        return True

    def get_rows(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows [start, stop) of a tensor's first dimension (all of it by default), as stored, on the CPU.

        One positioned read of just those bytes: a tensor larger than the memory budget is read in row blocks.
        A 0-d tensor is returned whole.
        """
        file = self._file(name)
        shape = self.shape(name)
        stop = self._row_stop(name, start, stop)
        whole = start == 0 and stop == (shape[0] if shape else 1)
        if file in self._handles:
            if POSITIONED_READS:
                return self._read(file, name, start, stop)
            if whole:
                return self._handles[file].get_tensor(name)
            return self._handles[file].get_slice(name)[start:stop]
        tensor = self._load_pickle(file)[name]
        return tensor if whole or not shape else tensor[start:stop]

    def _row_stop(self, name: str, start: int, stop: int | None) -> int:
        """``stop`` (default: the row count) once rows [start, stop) are checked to lie inside the tensor."""
        shape = self.shape(name)
        rows = shape[0] if shape else 1
        stop = rows if stop is None else stop
        if not 0 <= start <= stop <= rows:
            raise CMAAMError(f"{self.path}: rows {start}:{stop} out of range for tensor {name!r} of shape {shape}")
        return stop

    def _layout(self, file: Path) -> tuple[object, int, dict]:
        """(unbuffered file, byte offset of the data, parsed header) of a safetensors file, opened once."""
        if file not in self._raw:
            handle = open(file, "rb", buffering=0)
            length = struct.unpack("<Q", handle.read(8))[0]
            self._raw[file] = (handle, 8 + length, json.loads(handle.read(length)))
        return self._raw[file]

    def _byte_range(self, file: Path, name: str, start: int, stop: int) -> tuple[int, int, tuple[int, ...]]:
        """File offsets [begin, end) of rows [start, stop) of a tensor, and the rows' shape."""
        _, data_start, header = self._layout(file)
        begin, end = header[name]["data_offsets"]
        shape = self.shape(name)
        if shape:
            row_bytes = (end - begin) // shape[0] if shape[0] else 0
            begin, end = begin + start * row_bytes, begin + stop * row_bytes
            shape = (stop - start, *shape[1:])
        return data_start + begin, data_start + end, shape

    def _read(self, file: Path, name: str, start: int, stop: int) -> torch.Tensor:
        """Read rows [start, stop) of one tensor with positioned reads into fresh memory.

        Not through the memory map: mapped pages stay resident once touched, so a pass over a model
        would grow the process's RSS to the size of every input file (``view_rows`` releases them instead).
        """
        handle = self._layout(file)[0]
        begin, end, shape = self._byte_range(file, name, start, stop)
        buffer = torch.empty(end - begin, dtype=torch.uint8)
        view, done = memoryview(buffer.numpy()), 0
        while done < end - begin:
            count = os.preadv(handle.fileno(), [view[done:]], begin + done)
            if count <= 0:
                raise CMAAMError(f"{file}: truncated data for tensor {name!r}")
            done += count
        return buffer.view(self.dtype(name)).reshape(shape)

    def view_rows(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Rows [start, stop) as a view of the memory-mapped file: no copy, no fresh memory to fault in.

        For a caller that copies the rows at once (the executor converts them chunk by chunk) and then calls
        ``release_rows``: mapped pages count in the process's RSS until released. The mapping is private
        copy-on-write, so a write to the view never reaches the file. Where there is no such mapping (pickles,
        big-endian hosts) this is ``get_rows``.
        """
        file = self._file(name)
        if file not in self._handles or not MAPPED_VIEWS or self._mapping(file) is None:
            return self.get_rows(name, start, stop)
        begin, end, shape = self._byte_range(file, name, start, self._row_stop(name, start, stop))
        return self._mapping(file)[1][begin:end].view(self.dtype(name)).reshape(shape)

    def prefetch_rows(self, name: str, start: int = 0, stop: int | None = None) -> None:
        """Ask the kernel to start reading rows [start, stop) into the page cache now (read-ahead advice for the
        rows a caller reads next; no effect on results, and none where the file is not a safetensors file)."""
        file = self._file(name)
        if file not in self._handles or not hasattr(os, "posix_fadvise"):
            return
        begin, end, _ = self._byte_range(file, name, start, self._row_stop(name, start, stop))
        try:
            os.posix_fadvise(self._layout(file)[0].fileno(), begin, end - begin, os.POSIX_FADV_WILLNEED)
        except OSError:  # advice only
            pass

    def release_rows(self, name: str, start: int = 0, stop: int | None = None) -> None:
        """Drop the pages of rows [start, stop) (from ``view_rows``) from this process: they stay in the page
        cache, and a later read of them faults them in again unchanged."""
        file = self._file(name)
        if self._maps.get(file) is None:
            return
        begin, end, _ = self._byte_range(file, name, start, self._row_stop(name, start, stop))
        _advise(self._maps[file][0], "MADV_DONTNEED", begin, end)

    def _mapping(self, file: Path) -> tuple[mmap.mmap, torch.Tensor] | None:
        """The file's private read mapping and a uint8 tensor over it, made once; None where the file system
        cannot map it (then ``view_rows`` reads like ``get_rows``)."""
        if file not in self._maps:
            try:
                with open(file, "rb") as handle:
                    mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
                self._maps[file] = (mapping, torch.frombuffer(mapping, dtype=torch.uint8))
            except (OSError, ValueError):
                self._maps[file] = None
        return self._maps[file]

    def close(self) -> None:
        """Release file handles (a mapping still viewed by a live tensor is closed when that tensor goes)."""
        for handle, _, _ in self._raw.values():
            handle.close()
        self._raw.clear()
        self._maps.clear()
        self._handles.clear()
        self._pickled.clear()

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CheckpointReader({str(self.path)!r}, tensors={len(self)})"
