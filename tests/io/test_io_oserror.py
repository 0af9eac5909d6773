"""Write failures (disk full, read-only, file too large) reach the user as one line, exit 2, nothing left."""

from __future__ import annotations

import contextlib
import errno
import resource
import subprocess
import uuid

import pytest

from cmaam import merge
from cmaam.io.atomic import atomic_write_text
from io_helpers import assert_one_error_line, python


@contextlib.contextmanager
def small_tmpfs(tmp_path, size: str):
    """A tmpfs of ``size`` mounted under tmp_path (needs root and mount rights; the test is skipped otherwise)."""
    mount_point = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def _merge_into(call, place, output):
    target, source = place("T", "T"), place("S", "S")
    return call(merge.main, ["--source", source, "--target", target, "--output", output, "--no-progress"])


def test_disk_full_is_one_line_and_leaves_nothing(place, call, tmp_path):
    with small_tmpfs(tmp_path, "200k") as disk:  # the tiny model's weights are ~430 kB
        code, _, err = _merge_into(call, place, disk / "new" / "out")
        assert_one_error_line(code, err, f"{disk / 'new' / 'out'}", "No space left on device")
        assert ".partial" not in err
        assert list(disk.iterdir()) == []  # no partial folder, no lock, no folder this run created


def test_read_only_folder_is_one_line(place, call, tmp_path):
    with small_tmpfs(tmp_path, "1m") as disk:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        code, _, err = _merge_into(call, place, disk / "out")
        assert_one_error_line(code, err, str(disk / "out"), "Read-only file system")


def test_file_too_large_is_one_line_and_the_sweep_leaves_no_folder(place, tmp_path):
    """``ulimit -f``: SIGXFSZ is ignored so the write fails with EFBIG (it would kill the process)."""
    target, source = place("T", "T"), place("S", "S")
    output = tmp_path / "new" / "sweep"
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # noqa: E731
    result = python("-m", "cmaam.sweep", "--source", source, "--target", target, "--alphas", "0.3,0.7",
                    "--output-dir", output, "--no-progress", preexec_fn=limit)
    assert_one_error_line(result.returncode, result.stderr, f"{output / 'alpha_0.3'}: File too large")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S", "T"]


def test_os_errors_are_printed_with_their_path(call):
    def disk_full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/model.safetensors")

    def no_path(argv):
        raise OSError(errno.EIO, "Input/output error")

    assert_one_error_line(*call(disk_full, [])[::2], "error: /data/out/model.safetensors: No space left on device")
    code, _, err = call(no_path, [])
    assert (code, err) == (2, "error: Input/output error\n")


def test_atomic_file_errors_name_the_final_path(tmp_path, monkeypatch):
    """The hidden temporary file is an implementation detail: the error names the file asked for."""
    import os

    def full(handle):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as raised:
        atomic_write_text(tmp_path / "notes.txt", "x" * 100_000)
    assert raised.value.filename == str(tmp_path / "notes.txt")
    assert list(tmp_path.iterdir()) == []
