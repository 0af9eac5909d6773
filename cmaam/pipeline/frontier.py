"""The trade-off frontier of a comparison: Korean accuracy against English retention, one curve per method family.

Per family: its points (plus the base and the fine-tuned model, the two ends every merge interpolates
between), the area they dominate (hypervolume against (0, 0)), and the best Korean accuracy among the
points that keep at least 90 % / 70 % of the base's English. The Pareto front over all models is marked.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import Sequence

RETENTION_THRESHOLDS = (0.9, 0.7)
ENDPOINT_FAMILIES = ("base", "finetuned")
_PARAMETER = re.compile(r"^(?P<family>.+?)_(?P<value>\d+(\.\d+)?)$")


@dataclass(frozen=True)
class Point:
    """One model on the plane: x = target-language accuracy, y = retention of the base's English accuracy."""

    model: str
    family: str
    korean: float
    retention: float


@dataclass
class FamilySummary:
    """A family's points (ends included), dominated area and best target accuracy at each retention floor."""

    family: str
    points: list[Point]
    hypervolume: float
    best: dict[float, Point | None] = field(default_factory=dict)


@dataclass
class Frontier:
    """Every point, the overall Pareto front and the per-family summaries."""

    points: list[Point]
    front: list[Point]
    families: list[FamilySummary]
    thresholds: tuple[float, ...] = RETENTION_THRESHOLDS


def family_of(name: str, role: str, config: dict | None = None) -> str:
    """A run's method family: its config's ``family``, else its role for base/fine-tuned, else the name
    without a trailing numeric parameter (``linear_0.3`` -> ``linear``)."""
    if config and config.get("family"):
        return str(config["family"])
    if role in ENDPOINT_FAMILIES:
        return role
    match = _PARAMETER.match(name)
    return match.group("family") if match else name


def parameter_of(name: str, config: dict | None = None) -> float:
    """A run's position in its family (config ``parameter``, else the name's trailing number, else 0)."""
    if config and isinstance(config.get("parameter"), (int, float)):
        return float(config["parameter"])
    match = _PARAMETER.match(name)
    return float(match.group("value")) if match else 0.0


def dominates(first: Point, second: Point) -> bool:
    """True when ``first`` is at least as good on both axes and better on one."""
    return (first.korean >= second.korean and first.retention >= second.retention
            and (first.korean > second.korean or first.retention > second.retention))


def pareto_front(points: Sequence[Point]) -> list[Point]:
    """The points no other point dominates, by increasing target accuracy (one of each duplicated position)."""
    front, seen = [], set()
    for point in points:
        position = (point.korean, point.retention)
        if position in seen or any(dominates(other, point) for other in points):
            continue
        seen.add(position)
        front.append(point)
    return sorted(front, key=lambda p: (p.korean, -p.retention))


def hypervolume(points: Sequence[Point], reference: tuple[float, float] = (0.0, 0.0)) -> float:
    """Area of the union of the rectangles [reference, point] (both axes maximised); points at or below the
    reference on either axis add nothing."""
    front = [p for p in pareto_front(points) if p.korean > reference[0] and p.retention > reference[1]]
    area, left = 0.0, reference[0]
    for point in front:  # increasing x, decreasing y: each adds the strip from the previous x
        area += (point.korean - left) * (point.retention - reference[1])
        left = point.korean
    return area


def best_at_retention(points: Sequence[Point], floor: float) -> Point | None:
    """The point with the highest target accuracy among those retaining at least ``floor`` (ties: more retention)."""
    eligible = [p for p in points if p.retention >= floor]
    return max(eligible, key=lambda p: (p.korean, p.retention), default=None)


def frontier(rows: Sequence[dict], korean_key: str, families: dict[str, str],
             thresholds: Sequence[float] = RETENTION_THRESHOLDS) -> Frontier:
    """The frontier of comparison rows (``korean_key`` and ``en_retention_vs_base`` per model).

    ``families`` maps model name -> family. Rows without either figure are left out.
    """
    points = [Point(row["model"], families.get(row["model"], row["model"]), float(row[korean_key]),
                    float(row["en_retention_vs_base"]))
              for row in rows if row.get(korean_key) is not None and row.get("en_retention_vs_base") is not None]
    ends = [p for p in points if p.family in ENDPOINT_FAMILIES]
    summaries = []
    for family in dict.fromkeys(p.family for p in points if p.family not in ENDPOINT_FAMILIES):
        members = [p for p in points if p.family == family] + ends
        summaries.append(FamilySummary(family, members, hypervolume(members),
                                       {floor: best_at_retention(members, floor) for floor in thresholds}))
    return Frontier(points, pareto_front(points), summaries, tuple(thresholds))


def summary_rows(result: Frontier) -> list[dict]:
    """One row per family: models, hypervolume, best target accuracy (and its model) at each retention floor."""
    rows = []
    for summary in sorted(result.families, key=lambda s: -s.hypervolume):
        row = {"family": summary.family, "models": sum(p.family == summary.family for p in summary.points),
               "hypervolume": summary.hypervolume,
               "on_front": sum(p in result.front for p in summary.points if p.family == summary.family)}
        for floor, point in summary.best.items():
            row[f"best_ko_at_retention_{floor:g}"] = point.korean if point else None
            row[f"model_at_retention_{floor:g}"] = point.model if point else None
        rows.append(row)
    return rows


def to_csv(result: Frontier) -> str:
    """frontier.csv: the per-family summary (a header alone when no model has both figures)."""
    fields = ["family", "models", "hypervolume", "on_front"]
    for floor in result.thresholds:
        fields += [f"best_ko_at_retention_{floor:g}", f"model_at_retention_{floor:g}"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in summary_rows(result):
        writer.writerow({k: ("" if v is None else (f"{v:.6f}" if isinstance(v, float) else v)) for k, v in row.items()})
    return buffer.getvalue()


def to_markdown(result: Frontier) -> str:
    """The per-family summary as a Markdown table."""
    floors = [f"{floor:g}" for floor in result.thresholds]
    header = ["family", "models", "hypervolume", "on Pareto front"] + [f"best ko at retention >= {f}" for f in floors]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary_rows(result):
        cells = [row["family"], str(row["models"]), f"{row['hypervolume']:.4f}", str(row["on_front"])]
        for floor in floors:
            value, model = row[f"best_ko_at_retention_{floor}"], row[f"model_at_retention_{floor}"]
            cells.append("-" if value is None else f"{value:.3f} ({model})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(result: Frontier, korean_label: str = "ko exact match", title: str = "Korean vs English retention"):
    """One curve per family (points joined by increasing target accuracy), ends as stars, Pareto front marked
    (its staircase bounds the area the front dominates: down from each point, then across to the next)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot, axes = plt.subplots(figsize=(7.5, 5.2))
    colours = plt.get_cmap("tab10")
    for index, summary in enumerate(result.families):
        members = sorted(summary.points, key=lambda p: (p.korean, -p.retention))
        axes.plot([p.korean for p in members], [p.retention for p in members], marker="o", ms=4, lw=1.2,
                  color=colours(index % 10), label=f"{summary.family} (HV {summary.hypervolume:.3f})")
    for point in result.points:
        if point.family in ENDPOINT_FAMILIES:
            axes.scatter(point.korean, point.retention, marker="*", s=160, zorder=5,
                         color="black" if point.family == "base" else "tab:red")
            axes.annotate(point.family, (point.korean, point.retention), fontsize=8, xytext=(4, 4),
                          textcoords="offset points")
    front = result.front
    axes.step([p.korean for p in front], [p.retention for p in front], where="pre", color="black", lw=0.8,
              ls=":", label="Pareto front (all models)")
    axes.scatter([p.korean for p in front], [p.retention for p in front], s=90, facecolors="none",
                 edgecolors="black", zorder=4)
    for floor in result.thresholds:
        axes.axhline(floor, color="gray", lw=0.6, ls="--")
    axes.set_xlabel(korean_label)
    axes.set_ylabel("English retention vs base")
    axes.set_title(title)
    axes.legend(fontsize=7, loc="lower left")
    plot.tight_layout()
    return plot
