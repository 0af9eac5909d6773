"""Reading JSON and YAML files with one-line errors (the writers live in cmaam.io.atomic)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cmaam.core.config import read_yaml  # noqa: F401  (re-exported: the YAML reader lives beside the config loader)
from cmaam.core.errors import CMAAMError


def read_json(path: str | Path, missing: str | None = None, encoding: str = "utf-8") -> Any:
    """Parsed JSON; CMAAMError '<path>: <missing>' when absent, '<path>: invalid JSON (...)' when malformed."""
    path = Path(path)
    if not path.is_file():
        raise CMAAMError(f"{path}: {missing or 'no such file'}")
    try:
        return json.loads(path.read_text(encoding=encoding))
    except json.JSONDecodeError as error:
        raise CMAAMError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None


def figure_png(figure, dpi: int = 120) -> bytes:
    """PNG bytes of a matplotlib figure, which is closed; no 'Software' metadata, so the same figure gives the
    same bytes."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()
