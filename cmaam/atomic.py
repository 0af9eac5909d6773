"""Atomic file and folder writing: readers never see a half-written output."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON (sorted keys, indented, UTF-8, trailing newline) atomically; same object -> same bytes."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def atomic_write_yaml(path: str | Path, obj: Any) -> Path:
    """Write YAML (block style, keys in insertion order, UTF-8) atomically."""
    return atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


@contextlib.contextmanager
def atomic_directory(output: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``output``; rename it to ``output`` only if the block succeeds.

    On any exception (including KeyboardInterrupt) the temporary folder is removed and ``output``
    is left as it was.
    """
    output = Path(output)
    check_output_free(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.parent / f".{output.name}.partial-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    temporary.mkdir()
    try:
        yield temporary
        replace_directory(temporary, output)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def check_output_free(output: str | Path, overwrite: bool) -> None:
    """Raise CMAAMError when ``output`` exists and overwriting was not asked for."""
    from cmaam.errors import CMAAMError

    output = Path(output)
    if output.exists() and not overwrite:
        raise CMAAMError(f"{output}: output already exists (pass --overwrite to replace it)")
    if output.exists() and not output.is_dir():
        raise CMAAMError(f"{output}: exists and is not a folder")


def replace_directory(source: Path, destination: Path) -> None:
    """Move a finished folder into place, replacing an existing one with at most a brief swap."""
    if destination.exists():
        old = destination.parent / f".{destination.name}.old-{os.getpid()}"
        os.replace(destination, old)
        os.replace(source, destination)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, destination)
