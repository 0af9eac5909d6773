"""Watch a CMA-ES run: ``python -m cmaam.monitor RUN_DIR [--watch]`` prints best/mean fitness per
generation from state.json and draws the convergence curve (convergence.png in the run folder).
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path
from typing import Sequence

from cmaam.core.errors import CMAAMError
from cmaam.io.atomic import atomic_write_bytes

_LAYER_UNIT = re.compile(r"^(?:.*\.)?layers\.(\d+(?:-\d+)?)(?:\.(.+))?$")  # "model.layers.3.mlp..", "layers.0-3"


def read_state(run_dir: str | Path) -> dict:
    """The run's state.json (a clear error when the folder holds no search yet)."""
    from cmaam.io.files import read_json

    path = Path(run_dir) / "state.json"
    state = read_json(path, "no state.json (not a python -m cmaam.evolve run folder)")
    if not isinstance(state, dict) or not isinstance(state.get("history", []), list):
        raise CMAAMError(f"{path}: not a cmaam.search state (expected an object with a 'history' list)")
    return state


def plot_convergence(history: Sequence[dict]):
    """Best, mean and best-so-far fitness per generation, with the worst-to-best band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    generations = [h["generation"] + 1 for h in history]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.fill_between(generations, [h["worst"] for h in history], [h["best"] for h in history], alpha=0.15,
                      color="tab:blue", label="population range")
    axis.plot(generations, [h["mean"] for h in history], "o-", color="tab:blue", label="mean")
    axis.plot(generations, [h["best"] for h in history], "s-", color="tab:orange", label="best of generation")
    axis.plot(generations, [h["best_so_far"] for h in history], "--", color="tab:red", label="best so far")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("generation")
    axis.set_ylabel("fitness")
    axis.set_title("CMA-ES convergence")
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    return figure


def plot_genome(layout, best: Sequence[float], mean: Sequence[float]):
    """Best genome as a heatmap: one row per coefficient kind, one column per layer (non-layer tensors last)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows: dict[str, dict[str, float]] = {}
    columns: list[str] = []
    for gene, value in zip(layout.genes, best):
        match = _LAYER_UNIT.match(gene.unit)
        column, kind = (match.group(1), match.group(2) or "all") if match else ("other", gene.unit)
        kind = f"{kind}:{gene.parameter}" + (f"[{gene.model}]" if gene.model else "")
        rows.setdefault(kind, {})[column] = float(value)
        if column not in columns:
            columns.append(column)
    columns = sorted((c for c in columns if c != "other"), key=lambda c: int(c.split("-")[0])) + \
        (["other"] if "other" in columns else [])
    matrix = np.full((len(rows), len(columns)), np.nan)
    for r, kind in enumerate(rows):
        for c, column in enumerate(columns):
            matrix[r, c] = rows[kind].get(column, np.nan)
    figure, axis = plt.subplots(figsize=(max(6, 0.35 * len(columns) + 4), max(3, 0.3 * len(rows) + 1.5)))
    image = axis.imshow(matrix, aspect="auto", cmap="viridis")
    axis.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    axis.set_yticks(range(len(rows)), list(rows), fontsize=7)
    axis.set_xlabel("layer")
    axis.set_title(f"best genome ({layout.spec.method}, {len(layout)} genes; "
                   f"mean of search distribution {float(np.mean(mean)):.3f})")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    return figure


def format_history(state: dict) -> str:
    """A table of generation, best, mean, best so far, sigma and timing."""
    lines = [f"{'gen':>4} {'best':>12} {'mean':>12} {'best so far':>12} {'sigma':>8} {'evals':>6} {'seconds':>8}"]
    for h in state.get("generations", []):
        lines.append(f"{h['generation'] + 1:>4} {h['best']:>12.6g} {h['mean']:>12.6g} {h['best_so_far']:>12.6g} "
                     f"{h['sigma']:>8.4f} {h['evaluated']:>6} {h['seconds']:>8.1f}")
    status = "done" if state.get("done") else "running or interrupted"
    lines.append(f"{len(state.get('generations', []))}/{state.get('generations_planned', '?')} generations, "
                 f"population {state.get('population')}, {state.get('genes')} genes, {status}")
    return "\n".join(lines)


def draw(run_dir: str | Path, state: dict) -> Path:
    """Write convergence.png for ``state`` into the run folder (atomically)."""
    import matplotlib.pyplot as plt

    figure = plot_convergence(state.get("generations", []))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return atomic_write_bytes(Path(run_dir) / "convergence.png", buffer.getvalue())


def monitor(run_dir: str | Path, watch: bool = False, interval: float = 10.0, plot: bool = True) -> dict:
    """Print the run's history (and redraw the curve); with ``watch``, repeat until the run is done."""
    seen = None
    while True:
        state = read_state(run_dir)
        count = len(state.get("generations", []))
        if count != seen:
            print(format_history(state), flush=True)
            if plot and count:
                print(f"curve: {draw(run_dir, state)}", flush=True)
            seen = count
        if not watch or state.get("done"):
            return state
        time.sleep(interval)
