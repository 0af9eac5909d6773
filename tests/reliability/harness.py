"""The reliability suite's one checker: run a CLI in a subprocess and assert every promise of docs/reliability.md.

A failing run must exit 2 (130 when interrupted), print exactly one ``error:`` line as the last line of
stderr and no traceback, leave every input byte-for-byte as it was, and leave no output: the output
path is absent afterwards (or unchanged if it existed) and nothing new sits beside it (no
``.NAME.partial-*``, ``.NAME.old-*``, ``.NAME.lock``, no freshly created parent folders).

Set ``CMAAM_RELIABILITY_TABLE=path.jsonl`` to record one row per case (id, CLI, fault, exit code,
message, pass/fail) for ``tests/reliability/make_table.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[2]
TABLE_ENVIRONMENT = "CMAAM_RELIABILITY_TABLE"
SLOW_ENVIRONMENT = "CMAAM_RELIABILITY_SLOW"
INTERRUPTED = 130
USAGE_ERROR = 2
TIMEOUT = 300

# Loaded by the interpreter at start-up when its folder leads PYTHONPATH: slows every tensor write so a
# signal can land mid-write, without any hook in the production code.
SITECUSTOMIZE = f'''
import os
_delay = float(os.environ.get("{SLOW_ENVIRONMENT}", "0") or 0)
if _delay > 0:
    import time
    from cmaam.io import writer as _writer

    _add = _writer.CheckpointWriter.add

    def _slow_add(self, name, tensor):
        time.sleep(_delay)
        return _add(self, name, tensor)

    _writer.CheckpointWriter.add = _slow_add
'''


# -- commands ------------------------------------------------------------------------------------
def python(module: str, *args: object) -> list[str]:
    """``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *map(str, args)]


def script(relative: str, *args: object) -> list[str]:
    """A repository script: ``.sh`` through bash (``$PYTHON`` is this interpreter), ``.py`` through Python."""
    path = ROOT / relative
    runner = ["bash"] if path.suffix == ".sh" else [sys.executable]
    return [*runner, str(path), *map(str, args)]


def file_size_limit(blocks: int, command: Sequence[str]) -> list[str]:
    """Run ``command`` under ``ulimit -f blocks`` (1 KiB blocks): larger writes fail with EFBIG."""
    return ["bash", "-c", f'ulimit -f {blocks} && exec "$@"', "bash", *command]


def environment(slow: float = 0.0, sitecustomize: Path | None = None) -> dict[str, str]:
    """The subprocess environment: this worktree first on PYTHONPATH, offline, no debug tracebacks."""
    env = {key: value for key, value in os.environ.items() if key not in ("CMAAM_DEBUG", SLOW_ENVIRONMENT)}
    path = [str(ROOT)]
    if slow > 0:
        if sitecustomize is None:
            raise ValueError("slow runs need the folder holding sitecustomize.py")
        path.insert(0, str(sitecustomize))
        env[SLOW_ENVIRONMENT] = str(slow)
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.update(WANDB_MODE="disabled", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               TOKENIZERS_PARALLELISM="false", PYTHON=sys.executable, PYTHONDONTWRITEBYTECODE="1")
    return env


def write_sitecustomize(folder: Path) -> Path:
    """Write the slowing sitecustomize.py into ``folder`` (put first on PYTHONPATH by ``environment``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    return folder


# -- cases ---------------------------------------------------------------------------------------
@dataclass
class Case:
    """One fault: the command, the folders it reads (must stay unchanged) and the outputs it must not leave.

    ``fragments``: each entry is a string, or a tuple of alternatives, that the ``error:`` line must
    contain (case-insensitive). ``absent``: paths that must never appear (e.g. a pickle's payload).
    ``cleaned``: leftovers planted before a successful run that it must remove; ``report``: text the
    run's stderr must contain when it removes them; ``produced``: files a successful run must write.
    """

    id: str
    cli: str
    fault: str
    command: list[str]
    inputs: Sequence[Path] = ()
    outputs: Sequence[Path] = ()
    expect: int = USAGE_ERROR
    fragments: Sequence[str | tuple[str, ...]] = ()
    absent: Sequence[Path] = ()
    cleaned: Sequence[Path] = ()
    report: str | None = None
    produced: Sequence[Path] = ()
    cwd: Path | None = None
    slow: float = 0.0
    sitecustomize: Path | None = None
    timeout: float = TIMEOUT


@dataclass
class Snapshot:
    """What a case's paths looked like before the run."""

    inputs: dict[Path, object]
    outputs: dict[Path, object]
    anchors: dict[Path, tuple[Path, frozenset[str]]]  # output -> (nearest existing folder, its entries)


@dataclass
class Outcome:
    """A finished run: exit code, output streams, seconds, and the problems found (empty = passed)."""

    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    pid: int | None = None
    problems: list[str] = field(default_factory=list)


def entry_state(path: Path) -> str:
    """One entry: 'link -> target' for a link (not followed), 'dir' for a folder, else the file's sha256."""
    if path.is_symlink():
        return f"link -> {os.readlink(path)}"
    if path.is_dir():
        return "dir"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_state(path: Path) -> object:
    """sha256 of a file, or {relative path: sha256 / 'dir' / 'link -> target'} of a folder; None if absent."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        return entry_state(path)
    if not path.exists():
        return None
    return {str(Path(root, name).relative_to(path)): entry_state(Path(root, name))
            for root, folders, files in os.walk(path) for name in folders + files}


def _anchor(output: Path) -> Path:
    """The folder whose entries must not change: the output's parent, or its nearest existing ancestor."""
    output = Path(output).absolute()
    folder = output.parent
    while not folder.exists():
        folder = folder.parent
    return folder


def _entries(folder: Path) -> frozenset[str]:
    return frozenset(os.listdir(folder)) if folder.is_dir() else frozenset()


def snapshot(case: Case) -> Snapshot:
    """Hash every input and output and list the folders beside the outputs."""
    anchors = {}
    for output in case.outputs:
        folder = _anchor(output)
        anchors[Path(output)] = (folder, _entries(folder))
    return Snapshot({Path(p): tree_state(p) for p in case.inputs}, {Path(p): tree_state(p) for p in case.outputs},
                    anchors)


def _changed(before: object, after: object) -> str:
    if isinstance(before, dict) and isinstance(after, dict):
        added = sorted(set(after) - set(before))
        removed = sorted(set(before) - set(after))
        modified = sorted(k for k in set(before) & set(after) if before[k] != after[k])
        parts = [f"{label} {names[:3]}" for label, names in (("added", added), ("removed", removed),
                                                              ("modified", modified)) if names]
        return "; ".join(parts)
    if after is None:
        return "deleted"
    if before is None:
        return "created"
    return "content changed"


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)\b.*")


def message_of(outcome: Outcome) -> str:
    """The line a user reads: the last ``error:`` line, else the exception line of a traceback, else ''."""
    errors = error_lines(outcome.stderr)
    if errors:
        return errors[-1]
    exceptions = [line for line in outcome.stderr.splitlines() if _EXCEPTION_LINE.match(line)]
    return exceptions[-1].strip() if exceptions else ""


def verify(case: Case, before: Snapshot, outcome: Outcome) -> list[str]:
    """Every rule of the specification that ``outcome`` breaks, as readable sentences."""
    problems = []
    stderr = outcome.stderr
    if outcome.returncode != case.expect:
        problems.append(f"exit code {outcome.returncode}, expected {case.expect}")
    if "Traceback" in stderr or "Traceback" in outcome.stdout:
        problems.append("a traceback was printed")
    errors = error_lines(stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    if case.expect == 0:
        if errors:
            problems.append(f"a successful run printed {len(errors)} error: line(s)")
    else:
        if len(errors) != 1:
            problems.append(f"{len(errors)} lines start with 'error:' (expected exactly one)")
        if not lines or not lines[-1].startswith("error:"):
            problems.append("the last stderr line does not start with 'error:'")
        message = (errors[-1] if errors else "").lower()
        for fragment in case.fragments:
            options = (fragment,) if isinstance(fragment, str) else tuple(fragment)
            if errors and not any(option.lower() in message for option in options):
                problems.append(f"the error line does not mention {' or '.join(map(repr, options))}")
    if case.report is not None and case.report not in stderr:
        problems.append(f"stderr does not report {case.report!r}")
    for path, state in before.inputs.items():
        now = tree_state(path)
        if now != state:
            problems.append(f"input {path} changed ({_changed(state, now)})")
    for path in case.absent:
        if Path(path).exists():
            problems.append(f"{path} appeared (it must never be created)")
    for path in case.produced:
        if not Path(path).exists():
            problems.append(f"{path} was not written")
    for path in case.cleaned:
        if Path(path).exists():
            problems.append(f"leftover {Path(path).name} was not removed")
    cleaned = {Path(p).absolute() for p in case.cleaned}
    expected_entries: dict[Path, set[str]] = {}
    for output, state in before.outputs.items():
        folder, entries = before.anchors[output]
        expected = expected_entries.setdefault(folder, {name for name in entries if folder / name not in cleaned})
        if case.expect == 0:
            if not output.exists():
                problems.append(f"output {output} was not written")
            elif state is None:
                expected.add(Path(output).absolute().relative_to(folder).parts[0])
        else:
            now = tree_state(output)
            if now != state:
                problems.append(f"output {output} {'was left behind' if state is None else 'changed'}"
                                f" ({_changed(state, now)})")
    for folder, expected in expected_entries.items():
        now_entries = _entries(folder)
        extra = sorted(name for name in now_entries - expected if folder / name not in cleaned)  # reported above
        missing = sorted(expected - now_entries)
        if extra:
            problems.append(f"left beside the output in {folder}: {', '.join(extra)}")
        if missing:
            problems.append(f"removed from {folder}: {', '.join(missing)}")
    return problems


# -- running -------------------------------------------------------------------------------------
def _default_signals() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Children start with default SIGINT/SIGTERM handling even when the test runner ignores them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def launch(case: Case, signals: bool = True) -> subprocess.Popen:
    """Start the case's command (stdin closed, output captured).

    ``signals``: reset SIGINT/SIGTERM to their defaults in the child (needed only by cases that send
    signals; preexec_fn is avoided in the threaded batch runs).
    """
    return subprocess.Popen(case.command, cwd=case.cwd or ROOT, env=environment(case.slow, case.sitecustomize),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_signals if signals else None)


def collect(process: subprocess.Popen, started: float, timeout: float = TIMEOUT) -> Outcome:
    """Wait for a launched command; a command that hangs is killed and reported."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        stderr += f"\n[reliability suite: killed after {timeout:.0f}s]"
    return Outcome(process.returncode, stdout, stderr, time.monotonic() - started, process.pid)


def execute(case: Case, signals: bool = True) -> Outcome:
    """Run a case to completion."""
    started = time.monotonic()
    return collect(launch(case, signals), started, case.timeout)


def wait_for_temporary(output: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Block until the writer's temporary folder ``.NAME.partial-*`` appears beside ``output`` (writing began)."""
    output = Path(output)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if output.parent.is_dir() and any(output.parent.glob(f".{output.name}.partial-*")):
            return
        if process.poll() is not None:
            return
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"no .{output.name}.partial-* folder appeared beside {output} within {timeout}s")


def record(case: Case, outcome: Outcome | None, status: str) -> None:
    """Append the case's row to $CMAAM_RELIABILITY_TABLE (JSON lines), when set."""
    path = os.environ.get(TABLE_ENVIRONMENT)
    if not path:
        return
    row = {"id": case.id, "cli": case.cli, "fault": case.fault, "expect": case.expect,
           "exit": outcome.returncode if outcome else None, "message": message_of(outcome) if outcome else "",
           "status": status, "problems": outcome.problems if outcome else [],
           "seconds": round(outcome.seconds, 2) if outcome else None}
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(row, ensure_ascii=False) + "\n")


def conclude(case: Case, before: Snapshot, outcome: Outcome, extra: Iterable[str] = ()) -> None:
    """Check ``outcome`` against the rules, record the row and fail the test on any broken rule."""
    finish(case, outcome, [*extra, *verify(case, before, outcome)])


def finish(case: Case, outcome: Outcome, problems: list[str]) -> None:
    """Record the case's row with ``problems`` (empty: passed) and fail the test if there are any."""
    outcome.problems = problems
    record(case, outcome, "pass" if not problems else "FAIL")
    if problems:
        tail = "\n".join(outcome.stderr.strip().splitlines()[-8:])
        pytest.fail(f"{case.id}: " + "; ".join(problems) + f"\n--- stderr (tail) ---\n{tail}", pytrace=False)


def run_case(case: Case) -> Outcome:
    """Snapshot, run, check and record one case."""
    before = snapshot(case)
    outcome = execute(case)
    conclude(case, before, outcome)
    return outcome


def skip_case(case_id: str, cli: str, fault: str, reason: str) -> None:
    """Record a case that cannot run here (e.g. mount not permitted) and skip it."""
    record(Case(case_id, cli, fault, []), None, f"skipped: {reason}")
    pytest.skip(reason)


def interrupt_mid_write(case: Case, signum: int, settle: float = 0.3) -> None:
    """Start a slowed run, wait until its temporary output appears, send ``signum``, then check the rules."""
    before = snapshot(case)
    started = time.monotonic()
    process = launch(case)
    wait_for_temporary(case.outputs[0], process)
    time.sleep(settle)
    extra = [] if process.poll() is None else ["the command ended before the signal was sent (not mid-write)"]
    process.send_signal(signum)
    conclude(case, before, collect(process, started, case.timeout), extra)


# -- declarative cases run in parallel ------------------------------------------------------------
Builder = Callable[..., dict]


@dataclass
class Registry:
    """Cases of one test module: ``@CASES.add(id, cli, fault)`` on a builder returning Case fields.

    The module's fixture runs every case at once (``parallel`` interpreters at a time: start-up
    dominates their cost), and one parametrized test per case checks its outcome.
    """

    builders: dict[str, tuple[str, str, Builder]] = field(default_factory=dict)

    def add(self, case_id: str, cli: str, fault: str) -> Callable[[Builder], Builder]:
        def register(builder: Builder) -> Builder:
            if case_id in self.builders:
                raise ValueError(f"duplicate case id {case_id}")
            self.builders[case_id] = (cli, fault, builder)
            return builder
        return register

    def add_rows(self, cli: str, rows: Iterable[tuple], builder: Callable[..., dict]) -> None:
        """One case per row ``(id, fault, *values)``, built by ``builder(*values, workspace, folder)``."""
        for case_id, fault, *values in rows:
            self.add(case_id, cli, fault)(partial(builder, *values))

    def ids(self) -> list[str]:
        return list(self.builders)

    def run_all(self, request, workspace, tmp_path_factory, parallel: int = 2
                ) -> dict[str, tuple[Case, Snapshot, Outcome]]:
        """Build, snapshot and run the cases of this module that the session selected."""
        selected = {item.callspec.params.get("case_id") for item in request.session.items
                    if item.module is request.module and hasattr(item, "callspec")}
        cases = []
        for case_id, (cli, fault, builder) in self.builders.items():
            if case_id not in selected:
                continue
            folder = tmp_path_factory.mktemp(case_id)
            cases.append(Case(case_id, cli, fault, **builder(workspace, folder)))
        snapshots = [snapshot(case) for case in cases]
        with ThreadPoolExecutor(parallel) as pool:
            outcomes = list(pool.map(lambda case: execute(case, signals=False), cases))
        return {case.id: (case, before, outcome) for case, before, outcome in zip(cases, snapshots, outcomes)}

    def tests(self):
        """(module fixture running the cases, parametrized test checking one case): assign both at module end."""

        @pytest.fixture(scope="module")
        def results(request, workspace, tmp_path_factory):
            return self.run_all(request, workspace, tmp_path_factory)

        @pytest.mark.parametrize("case_id", self.ids())
        def test_case(case_id, results):
            case, before, outcome = results[case_id]
            conclude(case, before, outcome)

        return results, test_case


def with_id(case: Case, case_id: str, **changes) -> Case:
    """A copy of ``case`` under another id (e.g. the rerun after a kill)."""
    return replace(case, id=case_id, **changes)
