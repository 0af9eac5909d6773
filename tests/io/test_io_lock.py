"""Rule 2: one writer per output. A lock file beside the output, taken before any work, released after
the final rename; a second writer fails at once naming the holder; stale locks and leftovers are cleaned."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from cmaam import merge, sweep
from cmaam.io.atomic import claim_output, lock_path, output_lock
from cmaam.core.errors import CMAAMError
from io_helpers import ROOT, assert_one_error_line, python
from reliability.harness import environment, write_sitecustomize


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_lock_holds_pid_and_host_and_goes_after_the_block(tmp_path):
    output = tmp_path / "new" / "out"
    with output_lock(output) as real:
        lock = tmp_path / "new" / ".out.lock"
        assert real == output and lock_path(output) == lock
        pid, host, _ = lock.read_text().split()
        assert (int(pid), host) == (os.getpid(), socket.gethostname())
        with output_lock(output):  # re-entrant within one process (a CLI claims, then its writer)
            assert lock.exists()
        assert lock.exists()
    assert not lock.exists() and (tmp_path / "new").is_dir()  # success keeps the folder it created


def test_failed_run_releases_the_lock_and_removes_the_folders_it_created(place, call, tmp_path):
    target = place("T", "T")
    code, _, err = call(merge.main, ["--source", tmp_path / "missing", "--target", target,
                                     "--output", tmp_path / "new" / "deep" / "out", "--no-progress"])
    assert_one_error_line(code, err, "no such model folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["T"]


def test_a_lock_held_on_another_host_is_respected(tmp_path):
    (tmp_path / ".out.lock").write_text("4242 other-host deadbeef\n")
    with pytest.raises(CMAAMError, match=r"another run is writing this output \(PID 4242 on other-host\)"):
        with claim_output(tmp_path / "out", inputs=[]):
            pass
    assert (tmp_path / ".out.lock").read_text() == "4242 other-host deadbeef\n"  # not ours to remove


def test_second_writer_fails_at_once_naming_the_holder(place, tmp_path):
    """Two real processes: the first merges slowly, the second gives up at once; the first still succeeds."""
    target, source = place("T", "T"), place("S", "S")
    config = tmp_path / "linear.yaml"
    config.write_text(f"merge_method: linear\nmodels:\n  - model: {target}\n    parameters: {{weight: 0.5}}\n"
                      f"  - model: {source}\n    parameters: {{weight: 0.5}}\ndtype: float32\n")
    output = tmp_path / "out"
    # ~8 s of slow tensor writes: room for the second process to start (torch import) on a loaded machine
    slow = environment(slow=0.4, sitecustomize=write_sitecustomize(tmp_path / "hooks"))
    first = subprocess.Popen([sys.executable, "-m", "cmaam.mergekit", str(config), str(output), "--no-progress"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=slow)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".out.partial-*")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.poll() is None, first.communicate()
    second = python("-m", "cmaam.mergekit", config, output, "--no-progress")
    assert_one_error_line(second.returncode, second.stderr, f"PID {first.pid}", "another run is writing")
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert (output / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


def test_stale_lock_and_partial_of_a_dead_process_are_cleaned_and_reported(place, tmp_path):
    target, source = place("T", "T"), place("S", "S")
    dead = _dead_pid()
    (tmp_path / ".soup.lock").write_text(f"{dead} {socket.gethostname()} 0123456789abcdef\n")
    partial = tmp_path / f".soup.partial-{dead}"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half written")
    result = python("-m", "cmaam.soups", tmp_path / "soup", target, source)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "removed" in line]
    assert len(notes) == 2 and all(f"PID {dead}" in line for line in notes), result.stderr
    assert "stale lock" in notes[0] and f".soup.partial-{dead}" in notes[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S", "T", "soup"]


def test_a_stale_lock_is_reported_in_process(tmp_path, caplog):
    dead = _dead_pid()
    (tmp_path / ".out.lock").write_text(f"{dead} {socket.gethostname()} 0123456789abcdef\n")
    with caplog.at_level(logging.WARNING, logger="cmaam.io.atomic"):
        with claim_output(tmp_path / "out", inputs=[]):
            assert (tmp_path / ".out.lock").read_text().split()[0] == str(os.getpid())
    assert [record.getMessage() for record in caplog.records] == [
        f"{tmp_path / 'out'}: removed a stale lock left by PID {dead} (that process is gone)"]


def test_sweep_locks_each_output(place, call, tmp_path):
    """Another live process holds alpha_0.5: the sweep stops before any work and leaves the other lock alone."""
    target, source = place("T", "T"), place("S", "S")
    folder = tmp_path / "sweep"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = folder / ".alpha_0.5.lock"
        lock.write_text(f"{holder.pid} {socket.gethostname()} 0123456789abcdef\n")
        code, _, err = call(sweep.main, ["--source", source, "--target", target, "--alphas", "0.3,0.5",
                                         "--output-dir", folder, "--no-progress"])
        assert_one_error_line(code, err, f"{folder / 'alpha_0.5'}: another run is writing this output",
                              f"PID {holder.pid}")
        assert sorted(p.name for p in folder.iterdir()) == [".alpha_0.5.lock"]  # alpha_0.3's lock released
    finally:
        holder.kill()
        holder.wait()
