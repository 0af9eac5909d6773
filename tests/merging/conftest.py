"""Fixtures of the merging tests (until the test move of issue 11 lands: tests/foundation's tiny-model families)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundation.conftest import family  # noqa: E402,F401
