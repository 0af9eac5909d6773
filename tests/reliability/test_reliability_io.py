"""Faults of the machine rather than the input: signals, kill -9, concurrent writers, stale leftovers,
a full disk (ENOSPC), a read-only folder (EROFS) and a file-size limit (EFBIG).

Writes are slowed by a sitecustomize.py on the subprocess's PYTHONPATH (see harness.SITECUSTOMIZE), so a
signal lands while the output is being written; no hook in the production code is used.
"""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from reliability.harness import (INTERRUPTED, Case, collect, conclude, execute, file_size_limit, finish,
                                 interrupt_mid_write, launch, python, run_case, skip_case, snapshot, verify,
                                 wait_for_temporary, with_id)

SLOW = 0.1  # seconds per tensor written: 21 tensors (Llama) ~ 2 s, enough to land a signal mid-write
NO_SPACE = ("no space", "enospc", "disk is full", "disk full")
READ_ONLY = ("read-only", "read only", "erofs")
TOO_LARGE = ("too large", "efbig", "file size")


def mergekit_config(folder: Path, ws) -> Path:
    path = folder / "merge.yaml"
    path.write_text(f"merge_method: linear\nmodels:\n  - model: {ws.llama}\n    parameters: {{weight: 0.5}}\n"
                    f"  - model: {ws.llama_ft}\n    parameters: {{weight: 0.5}}\ndtype: float32\n", encoding="utf-8")
    return path


def mergekit_case(case_id: str, fault: str, ws, folder: Path, output: Path, **fields) -> Case:
    config = mergekit_config(folder, ws)
    return Case(case_id, "cmaam.mergekit", fault, python("cmaam.mergekit", config, output, "--no-progress"),
                inputs=[config, ws.llama, ws.llama_ft], outputs=[output], **fields)


def merge_command(ws, output: Path, *extra) -> list[str]:
    return python("cmaam.merge", "--source", ws.qwen_ft, "--target", ws.qwen, "--output", output, "--device", "cpu",
                  "--no-progress", *extra)


def soups_command(ws, output: Path) -> list[str]:
    return python("cmaam.soups", output, ws.llama, ws.llama_ft)


# -- signals -------------------------------------------------------------------------------------
def test_merge_sigterm_mid_write(workspace, tmp_path):
    case = Case("merge-sigterm-mid-write", "cmaam.merge", "SIGTERM while the merged model is being written",
                merge_command(workspace, tmp_path / "out"), inputs=[workspace.qwen, workspace.qwen_ft],
                outputs=[tmp_path / "out"], expect=INTERRUPTED, slow=SLOW, sitecustomize=workspace.sitecustomize)
    interrupt_mid_write(case, signal.SIGTERM)


def test_mergekit_sigint_mid_write(workspace, tmp_path):
    case = mergekit_case("mergekit-sigint-mid-write", "SIGINT (Ctrl-C) while the merged model is being written",
                         workspace, tmp_path, tmp_path / "out", expect=INTERRUPTED, slow=SLOW,
                         sitecustomize=workspace.sitecustomize)
    interrupt_mid_write(case, signal.SIGINT)


def test_sweep_sigint_mid_write(workspace, tmp_path):
    command = python("cmaam.sweep", "--source", workspace.llama_ft, "--target", workspace.llama, "--alphas", "0.3,0.7",
                     "--output-dir", tmp_path / "sweep", "--device", "cpu", "--no-progress")
    case = Case("sweep-sigint-mid-write", "cmaam.sweep", "SIGINT while two sweep outputs are being written", command,
                inputs=[workspace.llama, workspace.llama_ft],
                outputs=[tmp_path / "sweep" / "alpha_0.3", tmp_path / "sweep" / "alpha_0.7"], expect=INTERRUPTED,
                slow=SLOW / 2, sitecustomize=workspace.sitecustomize)
    interrupt_mid_write(case, signal.SIGINT)


def test_soups_kill9_then_rerun(workspace, tmp_path):
    """kill -9 cannot be cleaned up by the victim; the next run must remove its leftovers and succeed."""
    output = tmp_path / "soup"
    killed = Case("soups-kill9-mid-write", "cmaam.soups", "kill -9 mid-write", soups_command(workspace, output),
                  inputs=[workspace.llama, workspace.llama_ft], outputs=[output], slow=SLOW,
                  sitecustomize=workspace.sitecustomize)
    before = snapshot(killed)
    started = time.monotonic()
    process = launch(killed)
    wait_for_temporary(output, process)
    time.sleep(0.3)
    process.kill()
    collect(process, started)
    extra = [] if not output.exists() else ["the killed run left the output under its final name"]
    leftovers = [path for path in tmp_path.iterdir() if path.name.startswith(f".{output.name}")]
    rerun = with_id(killed, "soups-rerun-after-kill9", fault="rerun after kill -9: cleans the leftovers and succeeds",
                    expect=0, slow=0.0, cleaned=leftovers)
    conclude(rerun, before, execute(rerun), extra)


def _startup_interrupt(case: Case, delay: float = 0.3) -> None:
    before = snapshot(case)
    started = time.monotonic()
    process = launch(case)
    time.sleep(delay)
    extra = [] if process.poll() is None else ["the command ended before the signal was sent"]
    process.send_signal(signal.SIGINT)
    conclude(case, before, collect(process, started), extra)


def test_merge_sigint_during_imports(workspace, tmp_path):
    _startup_interrupt(Case("merge-sigint-during-imports", "cmaam.merge", "SIGINT 0.3 s after start (imports)",
                            merge_command(workspace, tmp_path / "out"), inputs=[workspace.qwen, workspace.qwen_ft],
                            outputs=[tmp_path / "out"], expect=INTERRUPTED))


def test_evolve_sigint_during_imports(workspace, tmp_path):
    command = python("cmaam.evolve", "--config", "tiny", "--output-dir", tmp_path / "run", "--wandb-mode", "disabled",
                     "--no-progress")
    _startup_interrupt(Case("evolve-sigint-during-imports", "cmaam.evolve", "SIGINT 0.3 s after start (imports)",
                            command, outputs=[tmp_path / "run"], expect=INTERRUPTED))


def test_sweep_sigint_during_imports(workspace, tmp_path):
    command = python("cmaam.sweep", "--source", workspace.llama_ft, "--target", workspace.llama, "--alphas", "0.5",
                     "--output-dir", tmp_path / "sweep", "--device", "cpu")
    _startup_interrupt(Case("sweep-sigint-during-imports", "cmaam.sweep", "SIGINT 0.3 s after start (imports)",
                            command, inputs=[workspace.llama, workspace.llama_ft], outputs=[tmp_path / "sweep"],
                            expect=INTERRUPTED))


# -- concurrent writers and stale leftovers -------------------------------------------------------
def test_mergekit_concurrent_writers(workspace, tmp_path):
    """A second writer to the same output fails at once, naming the first's PID; the first succeeds."""
    output = tmp_path / "out"
    first = mergekit_case("mergekit-concurrent-first", "first of two writers", workspace, tmp_path, output, expect=0,
                          slow=4 * SLOW, sitecustomize=workspace.sitecustomize)
    before_first = snapshot(first)
    started = time.monotonic()
    process = launch(first)
    wait_for_temporary(output, process)
    second = with_id(first, "mergekit-concurrent-writers", fault="a second writer while the first is writing",
                     expect=2, slow=0.0, fragments=[str(process.pid)], outputs=[])
    before_second = snapshot(second)
    outcome = execute(second)
    # Checked while the first is still writing: its lock and temporary folder are there, the output is not.
    problems = [] if process.poll() is None else ["the second writer did not return while the first was still writing"]
    problems += verify(second, before_second, outcome)
    if output.exists() and process.poll() is None:
        problems.append("the second writer wrote the output")
    problems += [f"the second writer left {path.name}" for path in tmp_path.iterdir() if str(outcome.pid) in path.name]
    first_outcome = collect(process, started)
    problems += [f"first writer: {problem}" for problem in verify(first, before_first, first_outcome)]
    finish(second, outcome, problems)


def _plant_stale(output: Path, dead_pid: int, kind: str) -> Path:
    if kind == "partial":
        leftover = output.parent / f".{output.name}.partial-{dead_pid}"
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(b"\0" * 1024)
    else:
        leftover = output.parent / f".{output.name}.lock"
        leftover.write_text(f"{dead_pid} {socket.gethostname()} 0123456789abcdef\n", encoding="utf-8")
    return leftover


def test_merge_stale_partial_folder(workspace, tmp_path, dead_pid):
    output = tmp_path / "out"
    leftover = _plant_stale(output, dead_pid, "partial")
    run_case(Case("merge-stale-partial", "cmaam.merge", "a .out.partial-PID folder of a dead process beside --output",
                  merge_command(workspace, output), inputs=[workspace.qwen, workspace.qwen_ft], outputs=[output],
                  expect=0, cleaned=[leftover], report=str(dead_pid)))


def test_mergekit_stale_lock(workspace, tmp_path, dead_pid):
    output = tmp_path / "out"
    leftover = _plant_stale(output, dead_pid, "lock")
    run_case(mergekit_case("mergekit-stale-lock", "a .out.lock holding the PID of a dead process", workspace, tmp_path,
                           output, expect=0, cleaned=[leftover], report=str(dead_pid)))


# -- the file system says no ----------------------------------------------------------------------
def test_mergekit_disk_full(workspace, tmp_path, small_disk):
    disk, reason = small_disk("disk")
    case_id, fault = "mergekit-disk-full", "ENOSPC: output on a 256 KiB tmpfs (the model is ~430 KiB)"
    if disk is None:
        skip_case(case_id, "cmaam.mergekit", fault, reason)
    run_case(mergekit_case(case_id, fault, workspace, tmp_path, disk / "out", fragments=[NO_SPACE]))


def test_soups_disk_full(workspace, tmp_path, small_disk):
    disk, reason = small_disk("disk")
    case_id, fault = "soups-disk-full", "ENOSPC: output on a 256 KiB tmpfs"
    if disk is None:
        skip_case(case_id, "cmaam.soups", fault, reason)
    run_case(Case(case_id, "cmaam.soups", fault, soups_command(workspace, disk / "soup"),
                  inputs=[workspace.llama, workspace.llama_ft], outputs=[disk / "soup"], fragments=[NO_SPACE]))


def test_sweep_read_only_folder(workspace, tmp_path, small_disk):
    disk, reason = small_disk("readonly", read_only=True)
    case_id, fault = "sweep-read-only-folder", "EROFS: --output-dir on a read-only tmpfs"
    if disk is None:
        skip_case(case_id, "cmaam.sweep", fault, reason)
    command = python("cmaam.sweep", "--source", workspace.llama_ft, "--target", workspace.llama, "--alphas", "0.5",
                     "--output-dir", disk / "sweep", "--device", "cpu", "--no-progress")
    run_case(Case(case_id, "cmaam.sweep", fault, command, inputs=[workspace.llama, workspace.llama_ft],
                  outputs=[disk / "sweep" / "alpha_0.5"], fragments=[READ_ONLY]))


def test_merge_read_only_folder(workspace, tmp_path, small_disk):
    disk, reason = small_disk("readonly", read_only=True)
    case_id, fault = "merge-read-only-folder", "EROFS: --output on a read-only tmpfs"
    if disk is None:
        skip_case(case_id, "cmaam.merge", fault, reason)
    run_case(Case(case_id, "cmaam.merge", fault, merge_command(workspace, disk / "out"),
                  inputs=[workspace.qwen, workspace.qwen_ft], outputs=[disk / "out"], fragments=[READ_ONLY]))


def test_soups_file_too_large(workspace, tmp_path):
    output = tmp_path / "soup"
    run_case(Case("soups-file-too-large", "cmaam.soups", "EFBIG: ulimit -f 64 (64 KiB) while writing ~430 KiB",
                  file_size_limit(64, soups_command(workspace, output)), inputs=[workspace.llama, workspace.llama_ft],
                  outputs=[output], fragments=[TOO_LARGE]))


def test_tiny_file_too_large(tmp_path):
    output = tmp_path / "tiny"
    command = file_size_limit(64, python("cmaam.tiny", "--output", output, "--model-type", "llama"))
    run_case(Case("tiny-file-too-large", "cmaam.tiny", "EFBIG: ulimit -f 64 while saving the model", command,
                  outputs=[output], fragments=[TOO_LARGE]))


@pytest.mark.parametrize("read_only", [False, True], ids=["writable", "read-only"])
def test_small_disk_fixture_behaves(small_disk, read_only):
    """The fault really is there: the tmpfs refuses a 300 KiB file (ENOSPC) or any file (EROFS)."""
    import errno

    disk, reason = small_disk("probe", read_only=read_only)
    if disk is None:
        pytest.skip(reason)
    with pytest.raises(OSError) as error:
        (disk / "big.bin").write_bytes(b"\0" * 300 * 1024)
    assert error.value.errno == (errno.EROFS if read_only else errno.ENOSPC)
