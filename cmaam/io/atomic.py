"""Atomic file and folder writing, and the output safety rules every writer goes through.

Readers never see a half-written output; no output equals, contains or lies inside one of its
inputs; one writer per output at a time (a lock file beside it). The rules are listed in
docs/foundation.md ("Outputs: safety rules").
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from cmaam.core.errors import CMAAMError

logger = logging.getLogger(__name__)
PathLike = str | os.PathLike


# -- files -------------------------------------------------------------------------------------
def _name_error(error: OSError, temporary: str | Path, final: str | Path) -> None:
    """Make an OSError name the output the user asked for, not our hidden temporary path."""
    temporary, final = str(temporary), str(final)
    if error.filename is None:
        error.filename = final
    elif isinstance(error.filename, str) and error.filename.startswith(temporary):
        error.filename = final + error.filename[len(temporary):]


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new hidden file beside ``path`` with the umask's usual mode (mkstemp would make it 0600)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.partial"
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write bytes to a temporary file beside ``path`` and rename it into place (mode as for a new file)."""
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = _create_temporary(path)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        if isinstance(error, OSError):
            _name_error(error, temporary or path, path)
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


# -- rule 1: an output never overlaps an input ----------------------------------------------------
def real_path(path: PathLike) -> Path:
    """The absolute path with every symbolic link resolved (``~`` expanded)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _real_paths(paths: Iterable[PathLike | None]) -> list[tuple[str, str]]:
    """(as given, resolved) for each path; parent folders are resolved once (many images share one)."""
    parents: dict[str, str] = {}
    resolved = []
    for path in paths:
        if path is None or str(path) == "":
            continue
        absolute = os.path.abspath(os.path.expanduser(os.fspath(path)))
        parent, name = os.path.split(absolute)
        if parent not in parents:
            parents[parent] = os.path.realpath(parent)
        full = os.path.join(parents[parent], name) if name else parents[parent]
        if os.path.islink(full):
            full = os.path.realpath(full)
        resolved.append((str(path), full))
    return resolved


def _within(path: str, folder: str) -> bool:
    """True when ``path`` lies strictly inside ``folder`` (both resolved)."""
    return path != folder and path.startswith(os.path.join(folder, ""))


def check_no_overlap(outputs: Iterable[PathLike], inputs: Iterable[PathLike | None]) -> None:
    """Refuse (whatever the flags) an output that equals, contains or lies inside an input, and an output
    that is the root folder, the home folder or holds the current folder. Paths are compared resolved."""
    inputs = _real_paths(inputs)
    home = os.path.realpath(os.path.expanduser("~"))
    here = os.path.realpath(os.getcwd())
    for given, output in _real_paths(outputs):
        if output == os.path.dirname(output) or output == home or output == here or _within(here, output):
            what = ("the root folder" if output == os.path.dirname(output) else "your home folder" if output == home
                    else "the current folder or one of its parents")
            raise CMAAMError(f"{given}: is {what}; refusing to write an output there")
        for name, source in inputs:
            if output == source:
                raise CMAAMError(f"{given}: is also an input ({name}); choose another output")
            if _within(output, source):
                raise CMAAMError(f"{given}: lies inside the input {name}; choose an output outside it")
            if _within(source, output):
                raise CMAAMError(f"{given}: contains the input {name}; replacing it would delete that input, "
                                 "choose another output")


def check_output_free(output: str | Path, overwrite: bool) -> None:
    """Raise CMAAMError when ``output`` exists and overwriting was not asked for."""
    output = Path(output)
    if os.path.islink(output) and not output.exists():
        raise CMAAMError(f"{output}: is a symbolic link to a missing path ({os.readlink(output)})")
    if output.exists() and not overwrite:
        raise CMAAMError(f"{output}: output already exists (pass --overwrite to replace it)")
    if output.exists() and not output.is_dir():
        raise CMAAMError(f"{output}: exists and is not a folder")


# -- rule 2: one writer per output ----------------------------------------------------------------
@dataclass
class _Hold:
    pid: int
    content: str
    count: int = 1
    created: list[Path] = field(default_factory=list)


_HELD: dict[str, _Hold] = {}
_HELD_GUARD = threading.RLock()
_LEFTOVER = r"^\.{name}\.(?:partial|old|greedy)-(\d+)(?:-.*)?$"


def lock_path(output: PathLike) -> Path:
    """The lock file of an output: ``.NAME.lock`` beside the resolved output."""
    real = real_path(output)
    return real.parent / f".{real.name}.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _read_holder(path: Path) -> tuple[str, int | None, str]:
    """(text, pid, host) of a lock file; pid None when unreadable or still being written."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "", None, ""
    parts = text.split()
    if len(parts) >= 2 and parts[0].isdigit():
        return text, int(parts[0]), parts[1]
    return text, None, ""


def _stale(pid: int, host: str) -> bool:
    """A lock of this host whose process is gone (or is this process, which holds no such lock)."""
    return host == socket.gethostname() and (pid == os.getpid() or not _pid_alive(pid))


def _break_stale(path: Path, text: str, output: PathLike, pid: int) -> None:
    """Remove a stale lock; if another process replaced it meanwhile, put that one back."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    if aside.read_text(encoding="utf-8") == text:
        os.unlink(aside)
        logger.warning("%s: removed a stale lock left by PID %d (that process is gone)", output, pid)
        return
    with contextlib.suppress(FileExistsError):
        os.link(aside, path)
    os.unlink(aside)


def _acquire(path: Path, output: PathLike) -> str:
    """Create the lock file atomically (O_CREAT|O_EXCL) holding 'PID HOST TOKEN'; fail at once if held."""
    content = f"{os.getpid()} {socket.gethostname()} {secrets.token_hex(8)}\n"
    for _ in range(50):
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        except FileExistsError:
            text, pid, host = _read_holder(path)
            if pid is None:
                time.sleep(0.02)  # just created, content not written yet (or removed meanwhile)
                continue
            if _stale(pid, host):
                _break_stale(path, text, output, pid)
                continue
            raise CMAAMError(f"{output}: another run is writing this output (PID {pid} on {host}); wait for it, "
                             f"or delete {path} if that process is gone") from None
        except OSError as error:
            _name_error(error, path, output)
            raise
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(content)
        except BaseException as error:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            if isinstance(error, OSError):
                _name_error(error, path, output)
            raise
        return content
    raise CMAAMError(f"{output}: the lock {path} is unreadable; delete it if no run is writing this output")


def _release(path: Path, content: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.read_text(encoding="utf-8") == content:
            os.unlink(path)


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones created here (outermost first)."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    created = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue
        created.append(path)
    return created


def _remove_leftovers(real: Path, output: PathLike) -> None:
    """Remove ``.NAME.partial-PID``, ``.NAME.old-PID`` and ``.NAME.greedy-PID-*`` left by dead processes."""
    pattern = re.compile(_LEFTOVER.format(name=re.escape(real.name)))
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(real.parent):
            match = pattern.match(entry.name)
            if not match or (int(match.group(1)) != os.getpid() and _pid_alive(int(match.group(1)))):
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            logger.warning("%s: removed %s left by PID %s (that process is gone)", output, entry.name,
                           match.group(1))


@contextlib.contextmanager
def output_lock(output: PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of ``output`` (yields its resolved path); re-entrant within a process.

    Creates the missing parent folders and, if the block fails, removes those it created (when empty).
    Stale locks and leftovers of dead processes are removed with a logged warning.
    """
    real = real_path(output)
    path = real.parent / f".{real.name}.lock"
    key = str(path)
    with _HELD_GUARD:
        hold = _HELD.get(key)
        if hold is not None and hold.pid == os.getpid():
            hold.count += 1
        else:
            created = _make_parents(real.parent)
            try:
                hold = _Hold(os.getpid(), _acquire(path, output), created=created)
            except BaseException:
                _remove_folders(created)
                raise
            _HELD[key] = hold
            _remove_leftovers(real, output)
    failed = True
    try:
        yield real
        failed = False
    finally:
        with _HELD_GUARD:
            hold.count -= 1
            if hold.count == 0:
                _HELD.pop(key, None)
                _release(path, hold.content)
                if failed:
                    _remove_folders(hold.created)


def _remove_folders(created: list[Path]) -> None:
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


@atexit.register
def _release_all() -> None:
    """Locks still held at exit (a run object never closed) are removed, not left behind as stale."""
    for key, hold in list(_HELD.items()):
        if hold.pid == os.getpid():
            _release(Path(key), hold.content)
    _HELD.clear()


# -- both rules, then an atomic folder ------------------------------------------------------------
@contextlib.contextmanager
def claim_output(output: PathLike, *, inputs: Iterable[PathLike | None], overwrite: bool | None = False
                 ) -> Iterator[Path]:
    """Before any work: refuse an output overlapping ``inputs``, take its lock, then check it is free.

    ``overwrite=None`` leaves an existing output to the caller (run folders that resume). Yields the
    resolved output path; the lock is released when the block ends.
    """
    check_no_overlap([output], inputs)
    if os.path.islink(output) and not Path(output).exists():
        raise CMAAMError(f"{output}: is a symbolic link to a missing path ({os.readlink(output)})")
    with output_lock(output) as real:
        if overwrite is not None:
            check_output_free(output, overwrite)
        yield real


@contextlib.contextmanager
def claim_outputs(outputs: Iterable[PathLike], *, inputs: Iterable[PathLike | None], overwrite: bool | None = False
                  ) -> Iterator[list[Path]]:
    """``claim_output`` for several outputs at once (all or none)."""
    inputs = list(inputs)
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(claim_output(output, inputs=inputs, overwrite=overwrite)) for output in outputs]


@contextlib.contextmanager
def atomic_directory(output: str | Path, overwrite: bool = False, *, inputs: Iterable[PathLike | None]
                     ) -> Iterator[Path]:
    """Yield a temporary folder beside ``output``; rename it to ``output`` only if the block succeeds.

    ``inputs`` are the paths the output is made from: the output may not equal, contain or lie inside
    any of them. The output's lock is held throughout. On any exception (including KeyboardInterrupt)
    the temporary folder is removed and ``output`` is left as it was. A symbolic link output is
    followed: the folder it points to is replaced, the link stays.
    """
    with claim_output(output, inputs=inputs, overwrite=overwrite) as real:
        temporary = real.parent / f".{real.name}.partial-{os.getpid()}"
        if temporary.exists():
            shutil.rmtree(temporary)
        try:
            temporary.mkdir()
            yield temporary
            if not overwrite and real.exists():  # appeared meanwhile (a writer that takes no lock)
                raise CMAAMError(f"{output}: appeared while this run was writing; the new output was discarded")
            replace_directory(temporary, real)
        except BaseException as error:
            shutil.rmtree(temporary, ignore_errors=True)
            if isinstance(error, OSError):
                _name_error(error, temporary, output)
            raise


def replace_directory(source: Path, destination: Path) -> None:
    """Move a finished folder into place, replacing an existing one with at most a brief swap.

    A symbolic link destination is followed (the folder it points to is replaced; the link stays).
    """
    destination = real_path(destination) if os.path.islink(destination) else Path(destination)
    sync_tree(source)  # on storage before it is published: a crash never leaves a named but empty model
    if destination.exists():
        old = destination.parent / f".{destination.name}.old-{os.getpid()}"
        os.replace(destination, old)
        os.replace(source, destination)
        _sync_folder(destination.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, destination)
        _sync_folder(destination.parent)


def sync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, and the folders themselves, to storage (fsync)."""
    for root, _, files in os.walk(folder):
        for name in files:
            descriptor = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        _sync_folder(Path(root))


def _sync_folder(folder: Path) -> None:
    """fsync a folder, so the names in it are on storage (where folders can be opened: not on Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems refuse fsync on a folder; the files themselves were flushed
        pass
    finally:
        os.close(descriptor)
