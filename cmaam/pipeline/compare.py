"""Compare tracked runs: a per-model metrics table (Markdown + CSV), Korean gain, English retention, and plots.

Reads local result folders (results/<run>/metrics.json + config.yaml) and, when a W&B project is
named, W&B runs (offline run folders found under the given paths, or the online API).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cmaam.core.errors import CMAAMError
from cmaam.io.atomic import (
    atomic_write_bytes,
    atomic_write_text,
)
from cmaam.io.files import figure_png, read_json, read_yaml

ROLES = ("base", "finetuned", "cmaam", "baseline", "other")


@dataclass
class RunRecord:
    """One model's figures: flat metrics (e.g. 'ko/exact_match', 'en/category/general/exact_match')."""

    name: str
    metrics: dict[str, float]
    role: str = "other"
    source: str = ""
    config: dict = field(default_factory=dict)


@dataclass
class Comparison:
    """The compared runs, the derived gain/retention columns, and the table rows."""

    records: list[RunRecord]
    metric: str
    korean: str
    english: str
    rows: list[dict]
    columns: list[str]

    @property
    def families(self) -> dict[str, str]:
        """Model name -> method family (config ``family``, role, or the name without its numeric parameter)."""
        from cmaam.pipeline.frontier import family_of

        return {record.name: family_of(record.name, record.role, record.config) for record in self.records}

    def frontier(self):
        """The Korean-vs-retention frontier of these runs (cmaam.pipeline.frontier)."""
        from cmaam.pipeline.frontier import frontier

        return frontier(self.rows, f"{self.korean}/{self.metric}", self.families)


def _read_yaml(path: Path) -> dict:
    data = read_yaml(path) if path.exists() else {}
    return data if isinstance(data, dict) else {}


def _numeric(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def read_local_run(folder: str | Path) -> RunRecord:
    """A result folder written by cmaam.io.tracking (metrics.json required)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CMAAMError(f"{folder}: no such result folder")
    metrics = read_json(folder / "metrics.json", "no metrics.json (not a finished run)")
    config = _read_yaml(folder / "config.yaml")
    role = str(config.get("role", "other"))
    return RunRecord(str(config.get("model_name", folder.name)), _numeric(metrics),
                     role if role in ROLES else "other", str(folder), config)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Result folders among ``paths``: each path is a run folder, or a folder of run folders."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise CMAAMError(f"{path}: no such result folder")
        if (path / "metrics.json").is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if (p / "metrics.json").is_file()))
    return found


def read_wandb_offline(paths: Sequence[str | Path], project: str) -> list[RunRecord]:
    """Offline W&B runs of ``project`` under ``paths`` (files/wandb-summary.json and files/config.yaml)."""
    records = []
    for root in map(Path, paths):
        for summary in sorted(root.glob("**/wandb/*run-*/files/wandb-summary.json")):
            files = summary.parent
            config = {k: (v.get("value") if isinstance(v, dict) else v)
                      for k, v in _read_yaml(files / "config.yaml").items() if not k.startswith("_")}
            metadata = json.loads((files / "wandb-metadata.json").read_text()) \
                if (files / "wandb-metadata.json").exists() else {}
            if config.get("project", metadata.get("project", project)) not in (project, None):
                continue
            metrics = _numeric({k: v for k, v in json.loads(summary.read_text()).items() if not k.startswith("_")})
            if metrics:
                name = str(config.get("model_name", files.parent.parent.parent.name))
                role = str(config.get("role", "other"))
                records.append(RunRecord(name, metrics, role if role in ROLES else "other", str(files), config))
    return records


def read_wandb_online(project: str) -> list[RunRecord]:  # pragma: no cover - needs network and an account
    """Finished runs of a W&B project through the public API."""
    try:
        import wandb

        runs = wandb.Api().runs(project)
    except Exception as error:
        raise CMAAMError(f"cannot read W&B project {project!r} ({str(error).splitlines()[0]})") from None
    records = []
    for run in runs:
        config = {k: v for k, v in run.config.items() if not k.startswith("_")}
        role = str(config.get("role", "other"))
        records.append(RunRecord(str(config.get("model_name", run.name)),
                                 _numeric({k: v for k, v in run.summary.items() if not k.startswith("_")}),
                                 role if role in ROLES else "other", run.url, config))
    return records


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def _difference(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else value - reference


def compare(records: Sequence[RunRecord], metric: str = "exact_match", korean: str = "ko", english: str = "en",
            base: str | None = None, finetuned: str | None = None) -> Comparison:
    """Table rows per model: overall and per-category metric per language, Korean gain, English retention."""
    if not records:
        raise CMAAMError("no runs to compare")
    records = list(records)
    by_name = {r.name: r for r in records}
    for role, name in (("base", base), ("finetuned", finetuned)):
        if name is not None:
            if name not in by_name:
                raise CMAAMError(f"--{role} {name!r} is not among the runs ({', '.join(sorted(by_name))})")
            for record in records:  # the named run is the reference; one that had the role by its config yields
                if record.role == role:
                    record.role = "other"
            by_name[name].role = role
    base_record = next((r for r in records if r.role == "base"), None)
    tuned_record = next((r for r in records if r.role == "finetuned"), None)
    categories = sorted({key.split("/")[2] for r in records for key in r.metrics
                         if key.startswith(f"{korean}/category/") and key.endswith(f"/{metric}")})
    ko_key, en_key = f"{korean}/{metric}", f"{english}/{metric}"
    if not any(ko_key in r.metrics or en_key in r.metrics for r in records):
        keys = sorted({k for r in records for k in r.metrics})[:12]
        raise CMAAMError(f"no run has {ko_key!r} or {en_key!r} (metrics seen: {', '.join(keys)})")
    columns = ["model", "role", "family", ko_key, en_key] + [f"{korean}/{c}" for c in categories]
    columns += ["ko_gain_vs_base", "ko_vs_finetuned", "en_retention_vs_base", "en_retention_vs_finetuned"]
    rows = []
    order = {role: index for index, role in enumerate(ROLES)}
    from cmaam.pipeline.frontier import family_of, parameter_of

    def sort_key(record: RunRecord):
        family = family_of(record.name, record.role, record.config)
        return order.get(record.role, 9), family, parameter_of(record.name, record.config), record.name

    for record in sorted(records, key=sort_key):
        ko, en = record.metrics.get(ko_key), record.metrics.get(en_key)
        row = {"model": record.name, "family": family_of(record.name, record.role, record.config), "role": record.role,
               ko_key: ko, en_key: en}
        for category in categories:
            row[f"{korean}/{category}"] = record.metrics.get(f"{korean}/category/{category}/{metric}")
        row["ko_gain_vs_base"] = _difference(ko, base_record.metrics.get(ko_key) if base_record else None)
        row["ko_vs_finetuned"] = _difference(ko, tuned_record.metrics.get(ko_key) if tuned_record else None)
        row["en_retention_vs_base"] = _ratio(en, base_record.metrics.get(en_key) if base_record else None)
        row["en_retention_vs_finetuned"] = _ratio(en, tuned_record.metrics.get(en_key) if tuned_record else None)
        rows.append(row)
    return Comparison(records, metric, korean, english, rows, columns)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.3f}" if value < 0 else f"{value:.3f}"
    return str(value)


def to_markdown(comparison: Comparison) -> str:
    """The comparison as a Markdown table."""
    lines = ["| " + " | ".join(comparison.columns) + " |", "|" + "---|" * len(comparison.columns)]
    for row in comparison.rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in comparison.columns) + " |")
    return "\n".join(lines) + "\n"


def to_csv(comparison: Comparison) -> str:
    """The comparison as CSV (empty cells where a figure is missing)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=comparison.columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in comparison.rows:
        writer.writerow({k: ("" if v is None else (f"{v:.6f}" if isinstance(v, float) else v)) for k, v in row.items()})
    return buffer.getvalue()


def plot(comparison: Comparison):
    """Bars per model (Korean and English metric) and a Korean-accuracy vs English-retention scatter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ko_key, en_key = f"{comparison.korean}/{comparison.metric}", f"{comparison.english}/{comparison.metric}"
    names = [row["model"] for row in comparison.rows]
    figure, (bars, scatter) = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(names) + 5), 4.5),
                                           gridspec_kw={"width_ratios": [2, 1]})
    positions = range(len(names))
    width = 0.4
    bars.bar([p - width / 2 for p in positions], [row[ko_key] or 0 for row in comparison.rows], width,
             label=f"{comparison.korean} {comparison.metric}")
    bars.bar([p + width / 2 for p in positions], [row[en_key] or 0 for row in comparison.rows], width,
             label=f"{comparison.english} {comparison.metric}")
    bars.set_xticks(list(positions), names, rotation=35, ha="right")
    bars.set_ylim(0, 1.05)
    bars.legend()
    bars.set_title("accuracy per model")
    colours = {"base": "black", "finetuned": "tab:red", "cmaam": "tab:blue", "baseline": "tab:gray",
               "other": "tab:green"}
    for row in comparison.rows:
        x, y = row[ko_key], row["en_retention_vs_base"]
        if x is None or y is None:
            continue
        scatter.scatter(x, y, color=colours.get(row["role"], "tab:green"))
        scatter.annotate(row["model"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    scatter.set_xlabel(f"{comparison.korean} {comparison.metric}")
    scatter.set_ylabel(f"{comparison.english} retention vs base")
    scatter.set_title("Korean gain vs English retention")
    figure.tight_layout()
    return figure


OUTPUT_FILES = ("comparison.md", "comparison.csv", "comparison.png", "frontier.csv", "frontier.png")


def adaptation_rows(records: Sequence[RunRecord]) -> list[dict]:
    """The adaptive merges among ``records`` (config ``method`` adamerging/adamms) whose model folder holds
    ``analysis/report.json``: its ``adaptation`` section (AdaMerging's entropies, AdaMMS's chosen mean alpha)."""
    from cmaam.pipeline.families import ADAPT_METHODS

    rows = []
    for record in records:
        report = Path(str(record.config.get("model", ""))) / "analysis" / "report.json"
        if record.config.get("method") not in ADAPT_METHODS or not report.is_file():
            continue
        section = read_json(report).get("adaptation")
        if isinstance(section, dict):
            rows.append({"model": record.name, **section})
    return rows


def adaptation_markdown(rows: Sequence[dict]) -> str:
    """The adaptive merges as a Markdown table: AdaMerging's mean answer entropy before -> after on the inputs
    it adapted on and on held-out inputs it never saw; AdaMMS's chosen mean alpha."""

    def entropy(row: dict, name: str) -> str:
        values = row.get("entropy", {}).get(name)
        return "-" if not values else f"{values['before']:.4f} -> {values['after']:.4f} ({values['inputs']} inputs)"

    header = ["model", "method", "entropy on adapted inputs", "entropy on held-out inputs", "AdaMMS mean alpha"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        chosen = row.get("chosen_mean_alpha")
        lines.append(f"| {row['model']} | {row.get('method', '-')} | {entropy(row, 'adapt')} | "
                     f"{entropy(row, 'held_out')} | {'-' if chosen is None else f'{chosen:g}'} |")
    return "\n".join(lines) + "\n"


def report_markdown(comparison: Comparison) -> str:
    """comparison.md: the table, the frontier's per-family summary and, if any, the adaptive merges."""
    from cmaam.pipeline import frontier

    text = (to_markdown(comparison) + "\n## Frontier: Korean accuracy vs English retention\n\n"
            + frontier.to_markdown(comparison.frontier()))
    adaptive = adaptation_rows(comparison.records)
    if adaptive:
        text += "\n## Adaptive merges (label-free)\n\n" + adaptation_markdown(adaptive)
    return text


def write_comparison(comparison: Comparison, output: str | Path) -> dict[str, Path]:
    """Write comparison.md/.csv/.png and frontier.csv/.png to ``output`` (each atomically)."""
    from cmaam.pipeline import frontier

    output = Path(output)
    result = comparison.frontier()
    label = f"{comparison.korean} {comparison.metric}"
    return {
        "markdown": atomic_write_text(output / "comparison.md", report_markdown(comparison)),
        "csv": atomic_write_text(output / "comparison.csv", to_csv(comparison)),
        "plot": atomic_write_bytes(output / "comparison.png", figure_png(plot(comparison))),
        "frontier_csv": atomic_write_text(output / "frontier.csv", frontier.to_csv(result)),
        "frontier_plot": atomic_write_bytes(output / "frontier.png", figure_png(frontier.figure(result, label))),
    }


def load_records(paths: Sequence[str | Path], wandb_project: str | None = None) -> list[RunRecord]:
    """Local runs under ``paths`` plus, with a project, its W&B runs (offline folders first, else online)."""
    records = [read_local_run(folder) for folder in find_runs(paths)] if paths else []
    if wandb_project:
        remote = read_wandb_offline(paths, wandb_project) if paths else []
        if not remote:
            remote = read_wandb_online(wandb_project)
        known = {r.name for r in records}
        records += [r for r in remote if r.name not in known]
    return records


def compare_runs(runs: Sequence[str | Path], output: str | Path | None = None, wandb_project: str | None = None,
                 metric: str = "exact_match", korean: str = "ko", english: str = "en", base: str | None = None,
                 finetuned: str | None = None) -> tuple[Comparison, dict[str, Path]]:
    """Compare the runs under ``runs`` (and a W&B project) and write comparison.md/.csv/.png to ``output``
    (default: beside the first run; never inside a run folder). Returns the comparison and the files."""
    from cmaam.io.atomic import check_no_overlap, output_lock

    comparison = compare(load_records(runs, wandb_project), metric, korean, english, base, finetuned)
    output = Path(output) if output else (Path(runs[0]) if runs else Path("comparison"))
    if runs and (output / "metrics.json").exists():
        output = output.parent / "comparison"
    files = [output / name for name in OUTPUT_FILES]
    sources = [record.source for record in comparison.records if record.source and Path(record.source).exists()]
    check_no_overlap(files, sources)
    with output_lock(output):
        return comparison, write_comparison(comparison, output)
