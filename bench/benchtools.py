"""Shared pieces of the benchmarks: run a command in a fresh process and measure it; the I/O floor.

    python bench/benchtools.py --measure -- COMMAND ...     # prints one JSON line about COMMAND
    python bench/benchtools.py --floor OUT_FILE BYTES FILE ...  # read FILEs once, write BYTES with fsync

``measure`` runs the command from a wrapper process, so the wrapper's RUSAGE_CHILDREN and /proc/self/io
(which gains a child's I/O counts when the child is reaped) describe that command alone: wall seconds,
peak RSS, CPU seconds, bytes read from and written to storage (read_bytes, write_bytes) and bytes passed
through read/write calls (rchar, wchar: page-cache hits included).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
BUFFER = 64 << 20


def process_io() -> dict[str, int]:
    """This process's /proc/self/io counters (reaped children included); empty where there is none."""
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return {}
    return {key: int(value) for key, value in (line.split(": ") for line in lines if ": " in line)}


def measure(command: Sequence[str], cwd: Path = ROOT) -> dict:
    """Run ``command`` through a fresh wrapper process; return its measurements (exit on failure)."""
    wrapper = [sys.executable, str(HERE), "--measure", "--", *command]
    result = subprocess.run(wrapper, capture_output=True, text=True, cwd=cwd)
    if result.returncode != 0:
        raise SystemExit(f"error: {command[0]} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _measure_child(command: list[str]) -> None:
    before = process_io()
    start = time.perf_counter()
    child = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if child.returncode != 0:
        sys.stderr.write(child.stderr)
        raise SystemExit(child.returncode)
    after = process_io()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    counts = {key: after.get(key, 0) - before.get(key, 0) for key in ("read_bytes", "write_bytes", "rchar", "wchar")}
    print(json.dumps({"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024,
                      "cpu_seconds": usage.ru_utime + usage.ru_stime, **counts}))


def weight_files(folders: Iterable[str | Path]) -> list[Path]:
    """The safetensors files of model folders."""
    return [file for folder in folders for file in sorted(Path(folder).glob("*.safetensors"))]


def folder_bytes(path: str | Path) -> int:
    """Bytes of a model folder's safetensors files."""
    return sum(file.stat().st_size for file in weight_files([path]))


def evict(files: Iterable[str | Path]) -> None:
    """Drop these files' pages from the page cache (after writing back dirty ones): the next read is cold.

    Only our own files are touched (posix_fadvise DONTNEED), never the whole cache.
    """
    for file in files:
        descriptor = os.open(file, os.O_RDONLY)
        try:
            os.fdatasync(descriptor)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def warm(files: Iterable[str | Path]) -> None:
    """Read these files once so a run starts from a warm page cache, and flush what earlier runs wrote
    (``os.sync``): a tool that does not fsync its output (mergekit) would otherwise leave its writeback to
    slow down the run after it."""
    buffer = bytearray(BUFFER)
    for file in files:
        with open(file, "rb", buffering=0) as handle:
            while handle.readinto(buffer):
                pass
    if hasattr(os, "sync"):
        os.sync()


def _floor(output: Path, size: int, inputs: list[str]) -> None:
    """Read every input once, then write ``size`` bytes to ``output`` and fsync it: no compute at all."""
    warm(inputs)
    block = memoryview(bytes(BUFFER))
    with open(output, "wb", buffering=0) as handle:
        written = 0
        while written < size:
            written += handle.write(block[:min(BUFFER, size - written)])
        os.fsync(handle.fileno())


def io_floor(inputs: Sequence[str | Path], size: int, scratch: Path) -> dict:
    """Measure the I/O floor of a merge: read ``inputs`` once + write ``size`` bytes with fsync, in a fresh process."""
    output = Path(scratch) / "io_floor.bin"
    try:
        return measure([sys.executable, str(HERE), "--floor", str(output), str(size), *map(str, inputs)])
    finally:
        output.unlink(missing_ok=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--measure" and sys.argv[2] == "--":
        _measure_child(sys.argv[3:])
    elif len(sys.argv) > 3 and sys.argv[1] == "--floor":
        _floor(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
    else:
        raise SystemExit(__doc__)
