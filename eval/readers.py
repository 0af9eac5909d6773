"""Line-numbered TSV and JSONL readers: a malformed line is reported as ``file:line: problem``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from cmaam.core.errors import CMAAMError


def _lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without newline) for non-blank lines of a UTF-8 file."""
    path = Path(path)
    if not path.is_file():
        raise CMAAMError(f"{path}: data file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise CMAAMError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line


def read_tsv(path: str | Path, columns: int) -> list[tuple[int, list[str]]]:
    """Rows of a header-less TSV with exactly ``columns`` tab-separated fields, with their line numbers."""
    rows = []
    for number, line in _lines(path):
        fields = line.split("\t")
        if len(fields) != columns:
            raise CMAAMError(f"{path}:{number}: expected {columns} tab-separated columns, found {len(fields)}")
        rows.append((number, fields))
    if not rows:
        raise CMAAMError(f"{path}: no rows")
    return rows


def read_jsonl(path: str | Path) -> list[tuple[int, dict]]:
    """Objects of a JSONL file (one JSON object a line), with their line numbers."""
    records = []
    for number, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise CMAAMError(f"{path}:{number}: invalid JSON ({error.msg} at column {error.colno})") from None
        if not isinstance(record, dict):
            raise CMAAMError(f"{path}:{number}: expected a JSON object, found {type(record).__name__}")
        records.append((number, record))
    if not records:
        raise CMAAMError(f"{path}: no records")
    return records


def write_jsonl_text(rows: list[dict]) -> str:
    """JSONL text (UTF-8, sorted keys, one object a line): the same rows give the same bytes."""
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
