"""Turn the rows recorded by the reliability suite into the Markdown table of docs/reliability.md.

    CMAAM_RELIABILITY_TABLE=/tmp/reliability.jsonl python -m pytest tests/reliability
    python tests/reliability/make_table.py /tmp/reliability.jsonl --update docs/reliability.md

Without ``--update`` the table is printed. With it, the text between the two table markers of the
document is replaced (the rest of the document is kept).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Iterable, Sequence

BEGIN = "<!-- reliability-table:begin -->"
END = "<!-- reliability-table:end -->"
CLI_ORDER = ("cmaam.merge", "cmaam.mergekit", "cmaam.sweep", "cmaam.soups", "cmaam.check", "cmaam.layouts",
             "cmaam.extract_lora", "cmaam.tiny", "cmaam.compare", "cmaam.monitor", "cmaam.evolve", "cmaam.experiment",
             "eval.mgsm", "eval.vqa", "finetune.synthetic_vqa", "finetune.lora_vqa", "finetune.data_prep",
             "scripts/prepare_korean_vqa_data.py")
MESSAGE_WIDTH = 160
PROBLEMS_WIDTH = 400
# pytest's temporary folders (/tmp/pytest-of-USER/pytest-N/CASE0/...) shown as "..."
TEMPORARY = re.compile(r"(?:/[^/\s'\"]+)*/pytest-of-[^/\s]+/pytest-\d+/[^/\s:'\"]+")


def read_rows(path: str | Path) -> list[dict]:
    """The recorded rows, the last row of each case id winning (a rerun replaces an earlier run)."""
    rows: dict[str, dict] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise SystemExit(f"error: {path}:{number}: not a JSON row ({error.msg})") from None
            rows[row["id"]] = row
    order = {cli: index for index, cli in enumerate(CLI_ORDER)}
    return sorted(rows.values(), key=lambda row: (order.get(row["cli"], len(order)), row["id"]))


def _cell(text: object, width: int = MESSAGE_WIDTH) -> str:
    """Table-safe text: one line, temporary folders shortened to '...', cut at ``width`` characters."""
    text = TEMPORARY.sub("...", " ".join(str(text if text is not None else "").split()))
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.replace("|", "\\|")


def _status(row: dict) -> str:
    status = row["status"]
    if status == "pass":
        return "pass"
    if status.startswith("skipped"):
        return _cell(status)
    return "**FAIL**: " + _cell("; ".join(row.get("problems") or []), PROBLEMS_WIDTH)


def markdown_table(rows: Iterable[dict]) -> str:
    """One line per case: id, CLI, fault, expected exit, observed exit, the message printed, status."""
    rows = list(rows)
    lines = ["| Case | CLI | Fault | Expected exit | Exit | Message printed (last `error:` line) | Status |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        message = f"`{_cell(row['message'])}`" if row.get("message") else ("" if row.get("exit") is None else "(none)")
        exit_code = "" if row.get("exit") is None else str(row["exit"])
        lines.append(f"| `{row['id']}` | {row['cli']} | {_cell(row['fault'])} | {row['expect']} | {exit_code} | "
                     f"{message} | {_status(row)} |")
    passed = sum(row["status"] == "pass" for row in rows)
    failed = sum(row["status"] == "FAIL" for row in rows)
    skipped = len(rows) - passed - failed
    lines.append("")
    lines.append(f"{len(rows)} cases: {passed} pass, {failed} fail, {skipped} skipped.")
    return "\n".join(lines) + "\n"


def update_document(document: str | Path, table: str) -> None:
    """Replace the text between the table markers of ``document``."""
    path = Path(document)
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"error: {path}: no {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}{END}{tail}", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Markdown table of the reliability suite's recorded rows.")
    parser.add_argument("rows", help="JSON-lines file written by the suite (CMAAM_RELIABILITY_TABLE)")
    parser.add_argument("--update", metavar="DOCUMENT", help="replace the table inside this Markdown document")
    args = parser.parse_args(argv)
    if not Path(args.rows).is_file():
        raise SystemExit(f"error: {args.rows}: no such file (run the suite with CMAAM_RELIABILITY_TABLE set)")
    table = markdown_table(read_rows(args.rows))
    if args.update:
        update_document(args.update, table)
    else:
        sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
