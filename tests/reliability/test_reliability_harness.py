"""The suite's own machinery: the checker catches each broken rule, the faults are real, the table is right."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest

from reliability.conftest import save_malicious_pickle
from reliability.harness import ROOT, Case, Outcome, environment, snapshot, verify
from reliability.make_table import BEGIN, END, markdown_table, read_rows, update_document


def _case(tmp_path, **fields):
    model = tmp_path / "model"
    if not model.exists():
        model.mkdir()
        (model / "config.json").write_text("{}", encoding="utf-8")
    fields.setdefault("outputs", [tmp_path / "out"])
    return Case("probe", "cmaam.probe", "a probe", ["true"], inputs=[model], **fields)


def _outcome(code=2, stderr="error: bad input\n"):
    return Outcome(code, "", stderr, 0.1)


def test_clean_failure_passes(tmp_path):
    case = _case(tmp_path)
    assert verify(case, snapshot(case), _outcome()) == []


@pytest.mark.parametrize("stderr, expected", [
    ("Traceback (most recent call last):\nerror: x\n", "a traceback was printed"),
    ("error: one\nerror: two\n", "2 lines start with 'error:'"),
    ("error: x\nwarning: after\n", "the last stderr line does not start with 'error:'"),
    ("", "0 lines start with 'error:'"),
])
def test_stderr_rules(tmp_path, stderr, expected):
    case = _case(tmp_path)
    problems = verify(case, snapshot(case), _outcome(stderr=stderr))
    assert any(expected in problem for problem in problems), problems


def test_wrong_exit_code_and_missing_fragment(tmp_path):
    case = _case(tmp_path, fragments=[("needle", "pin")])
    problems = verify(case, snapshot(case), _outcome(code=1))
    assert "exit code 1, expected 2" in problems
    assert any("does not mention 'needle' or 'pin'" in problem for problem in problems)


def test_changed_input_and_leftovers_are_caught(tmp_path):
    case = _case(tmp_path)
    before = snapshot(case)
    (tmp_path / "model" / "config.json").write_text('{"changed": 1}', encoding="utf-8")
    (tmp_path / ".out.partial-123").mkdir()
    problems = verify(case, before, _outcome())
    assert any(problem.startswith(f"input {tmp_path / 'model'} changed (modified ['config.json'])")
               for problem in problems), problems
    assert any(".out.partial-123" in problem for problem in problems), problems


def test_output_and_new_parent_folders_are_caught(tmp_path):
    case = _case(tmp_path, outputs=[tmp_path / "a" / "b" / "out"])
    before = snapshot(case)
    (tmp_path / "a" / "b").mkdir(parents=True)  # an empty parent folder created by a failed run
    problems = verify(case, before, _outcome())
    assert problems == [f"left beside the output in {tmp_path}: a"]


def test_existing_output_must_stay_unchanged(tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine", encoding="utf-8")
    case = _case(tmp_path)
    before = snapshot(case)
    (output / "keep.txt").unlink()
    problems = verify(case, before, _outcome())
    assert any("output" in problem and "changed" in problem and "removed ['keep.txt']" in problem
               for problem in problems), problems


def test_success_rules(tmp_path):
    leftover = tmp_path / ".out.lock"
    leftover.write_text("1\n", encoding="utf-8")
    case = _case(tmp_path, expect=0, cleaned=[leftover], report="1")
    before = snapshot(case)
    assert set(verify(case, before, _outcome(code=0, stderr=""))) == {
        "stderr does not report '1'", f"output {tmp_path / 'out'} was not written",
        "leftover .out.lock was not removed"}
    leftover.unlink()
    (tmp_path / "out").mkdir()
    assert verify(case, before, _outcome(code=0, stderr="note: removed .out.lock of dead process 1\n")) == []


def test_malicious_pickle_is_real(tmp_path):
    """Loaded unsafely, the fixture's pickle runs code (creates the marker); weights_only=True refuses it."""
    import torch

    marker = tmp_path / "PAYLOAD-RAN"
    path = save_malicious_pickle(tmp_path / "pytorch_model.bin", marker)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not marker.exists()
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_slowing_hook_patches_the_writer(tmp_path):
    from reliability.harness import write_sitecustomize

    hooks = write_sitecustomize(tmp_path / "hooks")
    code = "from cmaam.io.writer import CheckpointWriter as W; print(W.add.__name__)"
    slow = subprocess.run([sys.executable, "-c", code], env=environment(0.01, hooks), capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    plain = subprocess.run([sys.executable, "-c", code], env=environment(), capture_output=True, text=True, cwd=ROOT,
                           timeout=120)
    assert (slow.stdout.strip(), plain.stdout.strip()) == ("_slow_add", "add"), slow.stderr + plain.stderr


def test_table_from_rows(tmp_path):
    rows = tmp_path / "rows.jsonl"
    records = [
        {"id": "b-case", "cli": "cmaam.soups", "fault": "x | y", "expect": 2, "exit": 1, "message": "Boom",
         "status": "FAIL", "problems": ["exit code 1, expected 2"]},
        {"id": "a-case", "cli": "cmaam.merge", "fault": "missing", "expect": 2, "exit": 2,
         "message": "error: /tmp/pytest-of-root/pytest-7/a-case0/gone: missing", "status": "pass", "problems": []},
        {"id": "b-case", "cli": "cmaam.soups", "fault": "x | y", "expect": 2, "exit": 2, "message": "error: ok",
         "status": "pass", "problems": []},
        {"id": "c-case", "cli": "cmaam.sweep", "fault": "no mount", "expect": 2, "exit": None, "message": "",
         "status": "skipped: cannot mount", "problems": []},
    ]
    rows.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    table = markdown_table(read_rows(rows))
    lines = table.splitlines()
    assert lines[2] == "| `a-case` | cmaam.merge | missing | 2 | 2 | `error: .../gone: missing` | pass |"
    assert lines[3] == "| `c-case` | cmaam.sweep | no mount | 2 |  |  | skipped: cannot mount |"  # sweep before soups
    assert lines[4] == "| `b-case` | cmaam.soups | x \\| y | 2 | 2 | `error: ok` | pass |"  # the rerun won
    assert lines[-1] == "3 cases: 2 pass, 0 fail, 1 skipped."
    document = tmp_path / "doc.md"
    document.write_text(f"# Title\n\n{BEGIN}\nold\n{END}\n\nafter\n", encoding="utf-8")
    update_document(document, table)
    assert document.read_text(encoding="utf-8") == f"# Title\n\n{BEGIN}\n{table}{END}\n\nafter\n"


@pytest.mark.parametrize("stderr, message", [
    ("progress 10%\nerror: first\nerror: second\n", "error: second"),
    ("Traceback (most recent call last):\n  x = [\n      ^\nyaml.parser.ParserError: while parsing\n  ^\n",
     "yaml.parser.ParserError: while parsing"),
    ("Loading weights: 100%\n", ""),
])
def test_message_of(stderr, message):
    from reliability.harness import message_of

    assert message_of(_outcome(stderr=stderr)) == message
