"""Analysis outputs: report.json (every score and alpha), report.md (tables), PNG heatmaps, alphas.yaml."""

from __future__ import annotations

from pathlib import Path

from cmaam.alignment.alphas import AlphaPlan, alignment
from cmaam.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text, atomic_write_yaml
from cmaam.alignment.scores.analyzer import SCORE_NAMES, Analysis, aggregate

REPORT_VERSION = 1
HEATMAPS = {"heatmap_alpha.png": ("alpha",), "heatmap_scores.png": ("pda", "gfs", "cmbc", "sensitivity")}
NO_LAYER = "-"


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.8g}")


def _rounded(data: dict) -> dict:
    return {key: _round(value) if isinstance(value, float) else value for key, value in data.items()}


def component_summary(analysis: Analysis, plan: AlphaPlan) -> dict[str, dict]:
    """Per component: element-weighted scores, their alignment and the alpha range of its tensors."""
    alphas = plan.tensor_alphas
    summary = {}
    for component, group in aggregate(analysis.tensors.values(), lambda score: score.component).items():
        members = [s for s in analysis.tensors.values() if s.component == component]
        weighted = [s for s in members if s.changed] or members  # mean over the tensors a merge changes
        values = [alphas[s.name] for s in members]
        summary[component] = _rounded(dict(
            vars(group), changed=group.changed,
            alignment=alignment({n: group.score(n) for n in SCORE_NAMES}, plan.config.score_weights),
            mean_alpha=sum(alphas[s.name] * s.numel for s in weighted) / sum(s.numel for s in weighted),
            min_alpha=min(values), max_alpha=max(values)))
    return summary


def build_report(analysis: Analysis, plan: AlphaPlan, settings: dict, mapping: dict | None = None) -> dict:
    """Everything computed, as plain JSON data (rounded to 8 significant digits; same inputs -> same bytes).

    ``mapping`` (a ``TensorMapping.summary()``) is added for models of different types.
    """
    alphas = plan.tensor_alphas
    tensors = {name: _rounded(dict(score.to_dict(), group=plan.tensor_group[name], alpha=alphas[name]))
               for name, score in analysis.tensors.items()}
    values = list(alphas.values()) or [0.0]
    report = {
        "version": REPORT_VERSION,
        "settings": dict(settings, strategy=plan.config.strategy, base_alpha=plan.config.base_alpha,
                         alpha_min=plan.config.alpha_min, alpha_max=plan.config.alpha_max,
                         score_weights=plan.config.score_weights, preserve_mean=plan.config.preserve_mean,
                         use_sensitivity=plan.config.use_sensitivity, model_type=analysis.model_type),
        "summary": {
            "tensors_scored": len(analysis.tensors), "groups": len(plan.groups),
            "mean_alpha": _round(plan.mean_alpha), "min_alpha": _round(min(values)), "max_alpha": _round(max(values)),
            "only_in_target": len(analysis.only_in_target), "only_in_source": len(analysis.only_in_source),
            "not_floating": len(analysis.not_floating), "input_embedding": analysis.embedding,
            "cmbc_capture_term": analysis.capture_term,
        },
        "components": component_summary(analysis, plan),
        "groups": {key: _rounded(group.to_dict()) for key, group in plan.groups.items()},
        "tensors": tensors,
        "only_in_target": analysis.only_in_target,
        "only_in_source": analysis.only_in_source,
        "not_floating": analysis.not_floating,
    }
    if mapping is not None:
        report["mapping"] = mapping
    return report


def alphas_document(report: dict) -> dict:
    """The alphas.yaml content: settings, alpha per group and per tensor, unmatched names."""
    return {
        "settings": report["settings"],
        "mean_alpha": report["summary"]["mean_alpha"],
        "groups": {key: group["alpha"] for key, group in report["groups"].items()},
        "tensors": {name: tensor["alpha"] for name, tensor in report["tensors"].items()},
        "kept_from_target": report["only_in_target"] + report["not_floating"],
        "skipped_only_in_source": report["only_in_source"],
        **({"mapping": {key: value for key, value in report["mapping"].items() if not key.endswith("_names")}}
           if "mapping" in report else {}),
    }


def _cell(value) -> str:
    if value is None:
        return NO_LAYER
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (also readable as plain text in a terminal)."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def summary_table(report: dict) -> str:
    """The short per-component table printed after a merge."""
    rows = [[name, c["tensors"], c["numel"], c["pda"], c["gfs"], c["cmbc"], c["alignment"], c["mean_alpha"],
             c["min_alpha"], c["max_alpha"]] for name, c in report["components"].items()]
    return format_table(["component", "tensors", "params", "PDA", "GFS", "CMBC", "A", "mean alpha", "min", "max"],
                        rows)


def markdown_report(report: dict, figures: list[str], sections: list[str] = ()) -> str:
    """report.md: settings, summary, per-component and per-group tables, unmatched names, figures."""
    settings = report["settings"]
    lines = ["# CMAAM merge analysis", "",
             format_table(["setting", "value"], [[k, str(v)] for k, v in settings.items()]), "",
             "## Summary", "", format_table(["item", "value"], [[k, v] for k, v in report["summary"].items()]), "",
             "## Components", "", summary_table(report), "",
             f"## Groups ({settings['strategy']})", "",
             format_table(["group", "tensors", "params", "PDA", "GFS", "CMBC", "A", "r mean", "v", "alpha"],
                          [[k, g["tensors"], g["numel"], g["pda"], g["gfs"], g["cmbc"], g["alignment"],
                            g["sensitivity"], g["variance_used"], g["alpha"]] for k, g in report["groups"].items()]),
             ""]
    for key, title in (("only_in_target", "Only in the target (kept from the target)"),
                       ("only_in_source", "Only in the source (skipped)"),
                       ("not_floating", "Not floating point (copied from the target)")):
        if report[key]:
            lines += [f"## {title}: {len(report[key])}", ""] + [f"- `{name}`" for name in report[key]] + [""]
    lines += list(sections)
    lines += ["## Heatmaps", ""] + [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"


def heatmap_grid(report: dict, metric: str) -> tuple[list[str], list[str], list[list[float | None]]]:
    """Rows (component, or component:stack when a component has several stacks), layer columns, cell means."""
    cells: dict[tuple[str, str], list[tuple[float, int]]] = {}
    stacks: dict[str, set] = {}
    for tensor in report["tensors"].values():
        stacks.setdefault(tensor["component"], set()).add(tensor["stack"])
    for tensor in report["tensors"].values():
        if tensor[metric] is None:
            continue
        component = tensor["component"]
        row = component if len(stacks[component]) == 1 else f"{component}:{tensor['stack']}"
        column = NO_LAYER if tensor["layer"] is None else str(tensor["layer"])
        cells.setdefault((row, column), []).append((tensor[metric], tensor["numel"]))
    rows = list(dict.fromkeys(row for row, _ in sorted(cells, key=lambda cell: cell[0])))
    layers = sorted({int(c) for _, c in cells if c != NO_LAYER})
    columns = ([NO_LAYER] if any(c == NO_LAYER for _, c in cells) else []) + [str(layer) for layer in layers]
    grid = [[(sum(v * n for v, n in cells[(r, c)]) / sum(n for _, n in cells[(r, c)])) if (r, c) in cells else None
             for c in columns] for r in rows]
    return rows, columns, grid


def save_heatmaps(report: dict, metrics: tuple[str, ...], path: Path) -> bool:
    """Write one PNG with a component x layer heatmap panel per metric; False when no tensor has any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [(metric, *heatmap_grid(report, metric)) for metric in metrics]
    panels = [panel for panel in panels if panel[1]]
    if not panels:
        return False
    width = max(5.0, 0.35 * max(len(panel[2]) for panel in panels) + 3.5)
    heights = [max(1.0, 0.45 * len(panel[1])) + 0.9 for panel in panels]
    figure, axes_list = plt.subplots(len(panels), 1, figsize=(width, sum(heights) + 0.4), squeeze=False,
                                     gridspec_kw={"height_ratios": heights}, layout="constrained")
    for axes, (metric, rows, columns, grid) in zip(axes_list[:, 0], panels):
        values = np.array([[np.nan if v is None else v for v in row] for row in grid], dtype=float)
        upper = 1.0 if metric != "sensitivity" else max(float(np.nanmax(values)), 1e-12)
        image = axes.imshow(np.ma.masked_invalid(values), aspect="auto", cmap="viridis", vmin=0.0, vmax=upper)
        axes.set_xticks(range(len(columns)), columns, fontsize=7)
        axes.set_yticks(range(len(rows)), rows, fontsize=8)
        axes.set_title(f"{metric} by component x layer (- = not in a layer)", fontsize=9)
        axes.set_xlabel("layer", fontsize=8)
        if len(columns) <= 40:  # write the value in each cell while it stays legible
            for row_index, row in enumerate(grid):
                for column_index, value in enumerate(row):
                    if value is not None:
                        shade = "black" if value > 0.6 * upper else "white"
                        axes.text(column_index, row_index, f"{value:.2f}", ha="center", va="center", fontsize=7,
                                  color=shade)
        figure.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    figure.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(figure)
    return True


def write_analysis(folder: str | Path, report: dict, sections: list[str] = (),
                   extra_figures: dict[str, bytes] | None = None) -> list[Path]:
    """Write report.json, the heatmap PNGs (alpha; the scores) and report.md into ``folder``.

    ``sections`` (Markdown) and ``extra_figures`` (name -> PNG bytes), e.g. an adaptive search's, are added.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_json(folder / "report.json", report)]
    for name, data in (extra_figures or {}).items():
        written.append(atomic_write_bytes(folder / name, data))
    figures = []
    for name, metrics in HEATMAPS.items():
        if save_heatmaps(report, metrics, folder / name):
            figures.append(name)
            written.append(folder / name)
    written.append(atomic_write_text(folder / "report.md", markdown_report(report, figures, sections)))
    return written


def write_alphas(path: str | Path, report: dict) -> Path:
    """Write alphas.yaml (what each tensor was merged with)."""
    return atomic_write_yaml(path, alphas_document(report))
