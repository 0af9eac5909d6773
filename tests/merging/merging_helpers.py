"""Helpers shared by the merging tests (until the test move of issue 11 lands: those of tests/foundation)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundation.helpers import ROOT, run_cli_many, run_cli_module, write_yaml  # noqa: E402,F401
