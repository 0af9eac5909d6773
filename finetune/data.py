"""VQA data-set folders: split sizes, JSONL writing and per-category count tables."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from cmaam.io.atomic import atomic_write_text
from eval.readers import write_jsonl_text

SPLITS = ("train", "val", "test")
# The nine categories of the Korean VQA corpus, in the order of the project's count table.
CATEGORIES = ("document", "general", "latex", "captioning", "visualization", "table_vqa", "arxiv",
              "math_problem", "korean_problem")


def split_counts(total: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """Sizes of train/val/test for ``total`` samples (val and test rounded half up, train the rest)."""
    test = min(total, math.floor(total * test_fraction + 0.5))
    val = min(total - test, math.floor(total * val_fraction + 0.5))
    return {"train": total - val - test, "val": val, "test": test}


def write_vqa_split(path: str | Path, rows: Sequence[dict]) -> Path:
    """Write VQA JSONL records (sorted keys, UTF-8) atomically; the same rows give the same bytes."""
    return atomic_write_text(path, write_jsonl_text(list(rows)))


@dataclass(frozen=True)
class CountTable:
    """Per-category sample counts as Markdown (for people) and a dict (for programs)."""

    markdown: str
    data: dict


def count_table(rows: Mapping[str, Sequence[dict]], categories: Sequence[str] | None = None,
                extra: Mapping[str, Mapping[str, int]] | None = None) -> CountTable:
    """Count rows per category and split; ``extra`` adds columns (e.g. broken rows) before the splits.

    ``categories`` fixes the rows shown (absent ones count 0); by default the corpus order, then others.
    """
    extra = dict(extra or {})
    found = {row["category"] for split_rows in rows.values() for row in split_rows}
    found |= {category for column in extra.values() for category in column}
    if categories is None:
        categories = [c for c in CATEGORIES if c in found] + sorted(found - set(CATEGORIES))
    counts: dict[str, dict[str, int]] = {category: {} for category in categories}
    for category in categories:
        for name, column in extra.items():
            counts[category][name] = int(column.get(category, 0))
        for split in SPLITS:
            counts[category][split] = sum(1 for row in rows.get(split, ()) if row["category"] == category)
        counts[category]["total"] = sum(counts[category][split] for split in SPLITS)
    columns = [*extra, *SPLITS, "total"]
    totals = {column: sum(counts[c][column] for c in categories) for column in columns}
    lines = ["| category | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for category in [*categories, "total"]:
        values = totals if category == "total" else counts[category]
        label = "**total**" if category == "total" else category
        lines.append(f"| {label} | " + " | ".join(f"{values[column]:,}" for column in columns) + " |")
    return CountTable("\n".join(lines) + "\n", {"categories": counts, "total": totals})
