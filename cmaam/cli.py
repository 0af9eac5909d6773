"""Shared entry-point wrapper: one-line errors, clean interruption, no tracebacks for user mistakes."""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable, NoReturn, Sequence

from cmaam.errors import CMAAMError


def _raise_interrupt(signum, frame):  # pragma: no cover - exercised through subprocess tests
    raise KeyboardInterrupt(f"signal {signum}")


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> NoReturn:
    """Run a CLI main function; CMAAMError and interrupts become one line on stderr and an exit code.

    SIGTERM is turned into KeyboardInterrupt so context managers (atomic writers) clean up.
    Set CMAAM_DEBUG=1 to see full tracebacks.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        code = main(argv)
    except CMAAMError as error:
        if os.environ.get("CMAAM_DEBUG"):
            raise
        message = str(error).strip().replace("\n", " ") or error.__class__.__name__
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted; no partial output was left under the final name", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(code or 0))
