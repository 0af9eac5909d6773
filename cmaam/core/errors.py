"""User-facing errors: printed by the CLIs as one line, without a traceback."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator


class CMAAMError(Exception):
    """An error caused by the user's input (paths, configs, models), reported as one clear line."""


class InterruptedRun(CMAAMError):
    """Raised when SIGTERM/SIGINT arrives; temporary outputs are removed on the way out."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message, else its class name."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


@contextlib.contextmanager
def load_errors(path: str | Path, what: str = "model", action: str = "load") -> Iterator[None]:
    """Turn any failure of a third-party loader (transformers ``from_pretrained``, safetensors, PIL, json)
    on the user's ``path`` into one CMAAMError line: ``PATH: cannot load the WHAT (first line of the cause)``.

    Wrap only the loading call: everything raised inside counts as a bad file, not as a bug.
    ``action="write"`` serves third-party savers the same way (``save_pretrained`` on a full disk).
    """
    try:
        yield
    except CMAAMError:
        raise
    except Exception as error:  # loaders raise OSError, ValueError, KeyError, SafetensorError, RuntimeError...
        raise CMAAMError(f"{path}: cannot {action} the {what} ({first_line(error)})") from error
