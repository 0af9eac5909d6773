"""Shared entry-point wrapper: one-line errors, clean interruption, no tracebacks for user mistakes."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Callable, NoReturn, Sequence

import cmaam
from cmaam.core.errors import CMAAMError


def _raise_interrupt(signum, frame):  # pragma: no cover - exercised through subprocess tests
    raise KeyboardInterrupt(f"signal {signum}")


def describe_os_error(error: OSError) -> str:
    """'<path>: <reason>' for an OSError (the reason alone when it names no path)."""
    reason = error.strerror or str(error) or type(error).__name__
    paths = [str(name) for name in (error.filename, error.filename2) if name is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


# the loggers configured for a command: our packages, and the module run by ``python -m`` (named __main__)
LOGGERS = ("cmaam", "eval", "finetune", "__main__")


class _PrefixFormatter(logging.Formatter):
    """``note: ...`` for INFO, ``warning: ...``, ``error: ...``, ``debug: ...``: the CLIs' stderr style."""

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelno
        prefix = "debug" if level < logging.INFO else "note" if level < logging.WARNING else \
            "warning" if level < logging.ERROR else "error"
        return f"{prefix}: {super().format(record)}"


class _StderrHandler(logging.Handler):
    """Writes each record to the current ``sys.stderr`` (looked up per record, so redirection keeps working)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


def configure_logging() -> None:
    """Diagnostics of our packages go to stderr as one prefixed line each; stdout stays for results.

    Level INFO, or DEBUG with CMAAM_DEBUG=1. Idempotent: a second call replaces the handler.
    """
    level = logging.DEBUG if os.environ.get("CMAAM_DEBUG") else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(_PrefixFormatter("%(message)s"))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level)


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> NoReturn:
    """Run a CLI main function; CMAAMError, OSError and interrupts become one line on stderr and an exit code.

    SIGTERM is turned into KeyboardInterrupt so context managers (atomic writers) clean up. SIGXFSZ
    (file size limit, ``ulimit -f``) is ignored so the write fails with EFBIG and is reported like
    any other OSError. Diagnostics are logged to stderr (configure_logging). Set CMAAM_DEBUG=1 to see
    full tracebacks and debug messages.
    """
    configure_logging()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    if signal.getsignal(signal.SIGINT) is cmaam._interrupted_at_start:  # start-up handler: back to Python's
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        code = main(argv)
    except CMAAMError as error:
        if os.environ.get("CMAAM_DEBUG"):
            raise
        message = str(error).strip().replace("\n", " ") or error.__class__.__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        if os.environ.get("CMAAM_DEBUG"):
            raise
        print(f"error: {describe_os_error(error)}".replace("\n", " "), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; no partial output was left under the final name", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(code or 0))
