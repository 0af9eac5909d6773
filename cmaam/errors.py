"""User-facing errors: printed by the CLIs as one line, without a traceback."""

from __future__ import annotations


class CMAAMError(Exception):
    """An error caused by the user's input (paths, configs, models), reported as one clear line."""


class InterruptedRun(CMAAMError):
    """Raised when SIGTERM/SIGINT arrives; temporary outputs are removed on the way out."""
