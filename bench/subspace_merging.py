"""Data-free subspace merging vs task arithmetic on the synthetic multi-task layer of cmaam.testing.multitask.

    python bench/subspace_merging.py [--seeds 5] [--plot subspace_merging.png]

Two regimes: "saturated" (8 tasks of rank 8 fill a 64 x 64 layer, their subspaces overlapping: the tasks
compete for the layer's directions) and "sparse" (8 tasks of rank 4 in a 256 x 256 layer: mostly
disjoint). Per method, averaged over seeds: the alignment cos(D X_t, S_t X_t) of the merged layer's output
change with each task's own (mean over tasks, and the worst task), the relative score
1 - ||(D - S_t) X_t|| / ||S_t X_t|| at the method's defaults, and that score after the best rescaling of the
merged update (an oracle chosen on the scores themselves; for task arithmetic, the best lambda).
"""

from __future__ import annotations

import argparse
import time

from cmaam.testing.multitask import MultiTaskProblem, compare_methods

REGIMES = {
    "saturated": MultiTaskProblem(dim=64, tasks=8, rank=8),
    "sparse": MultiTaskProblem(dim=256, tasks=8, rank=4),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--plot", help="write a bar chart of the mean scores to this PNG")
    arguments = parser.parse_args()
    results = {}
    for name, problem in REGIMES.items():
        start = time.perf_counter()
        figures = compare_methods(problem, seeds=arguments.seeds)
        results[name] = figures
        print(f"\n{name}: {problem} ({arguments.seeds} seeds, {time.perf_counter() - start:.1f} s)")
        print(f"{'method':30s} {'alignment':>9s} {'worst task':>10s} {'score':>7s} {'best-scaled score':>18s}")
        for row in figures:
            print(f"{row.label:30s} {row.alignment:9.3f} {row.worst_alignment:10.3f} {row.score:7.3f} "
                  f"{row.best_scaled:11.3f} (x{row.best_scale:.1f})")
    if arguments.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), sharey=True)
        for axis, (name, figures) in zip(axes, results.items()):
            labels = [row.label.replace(" (", "\n(") for row in figures]
            axis.bar(range(len(figures)), [row.alignment for row in figures], label="mean over tasks")
            axis.scatter(range(len(figures)), [row.worst_alignment for row in figures], color="black", zorder=3,
                         label="worst task")
            axis.set_xticks(range(len(figures)), labels, rotation=60, ha="right", fontsize=8)
            axis.axhline(0, color="grey", linewidth=0.8)
            axis.set_title(name)
        axes[0].set_ylabel("alignment with each task's own update")
        axes[0].legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(arguments.plot, dpi=120)
        print(f"\nplot: {arguments.plot}")


if __name__ == "__main__":
    main()
