"""cmaam.

When a command of this project starts (``python -m cmaam.X``, ``eval.X``, ``finetune.X``, a script of
``scripts/`` or a ``cmaam-*`` console command), Ctrl-C during its slow imports (torch, transformers)
exits with ``error: interrupted`` (code 130) instead of a traceback: nothing has been written yet.
``cmaam.core.cli.run_cli`` puts Python's usual handler back once ``main`` starts, so interrupts then
clean up through the atomic writers.
"""

import os as _os
import signal as _signal
import sys as _sys

_COMMAND_FOLDERS = tuple(_os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), name, "")
                         for name in ("cmaam", "eval", "finetune", "scripts"))


def _interrupted_at_start(signum, frame):  # pragma: no cover - exercised through subprocess tests
    _os.write(2, b"error: interrupted\n")
    _os._exit(130)


def _started_as_command() -> bool:
    """True while ``python -m`` locates our module ("-m"), when argv[0] is one of our files or a console command."""
    first = _sys.argv[0] if _sys.argv else ""
    return (first == "-m" or _os.path.basename(first).startswith("cmaam-")
            or (first.endswith(".py") and _os.path.abspath(first).startswith(_COMMAND_FOLDERS)))


if _started_as_command() and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    try:
        _signal.signal(_signal.SIGINT, _interrupted_at_start)
    except ValueError:  # not the main thread
        pass
