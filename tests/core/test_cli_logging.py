"""run_cli configures logging once: diagnostics on stderr as ``note:``/``warning:`` lines, results on stdout."""

from __future__ import annotations

import logging

import pytest

from cmaam.core.cli import run_cli


def _main(argv):
    logging.getLogger("cmaam.some.module").debug("details %d", 1)
    logging.getLogger("cmaam.some.module").info("3 tensor(s) were kept")
    logging.getLogger("finetune.other").warning("no checkpoint to resume from")
    logging.getLogger("__main__").info("from the module run by python -m")
    logging.getLogger("urllib3.connectionpool").info("a third-party message")  # not ours: stays silent
    print("the result")
    return 0


def _run(capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        run_cli(_main, [])
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_diagnostics_go_to_stderr_with_prefixes_results_to_stdout(capsys, monkeypatch):
    monkeypatch.delenv("CMAAM_DEBUG", raising=False)
    code, out, err = _run(capsys)
    assert code == 0 and out == "the result\n"
    assert err.splitlines() == ["note: 3 tensor(s) were kept", "warning: no checkpoint to resume from",
                                "note: from the module run by python -m"]


def test_a_second_run_does_not_repeat_lines(capsys, monkeypatch):
    monkeypatch.delenv("CMAAM_DEBUG", raising=False)
    _run(capsys)
    _, _, err = _run(capsys)
    assert err.count("note: 3 tensor(s) were kept") == 1


def test_cmaam_debug_shows_debug_messages(capsys, monkeypatch):
    monkeypatch.setenv("CMAAM_DEBUG", "1")
    _, _, err = _run(capsys)
    assert err.splitlines()[0] == "debug: details 1"
    monkeypatch.delenv("CMAAM_DEBUG")
    _, _, err = _run(capsys)
    assert "debug:" not in err
