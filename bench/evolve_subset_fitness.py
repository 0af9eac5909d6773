"""Subset fitness against full scoring: the same search twice, item evaluations and seconds saved, final quality.

    python bench/evolve_subset_fitness.py                                  # tiny preset, MGSM-en, CPU
    python bench/evolve_subset_fitness.py --preset tiny_vlm --limit 0 --size 12 --rule irt
    python bench/evolve_subset_fitness.py --preset tiny_dfs --output results/bench/subset_dfs

Both arms use the preset with the same seed, models and generations; the subset arm adds
``fitness.subset`` (the first generation scores every item and calibrates the subset). Final quality is
each arm's best candidate scored on the full item set (the subset arm only ever picks fully scored
candidates). Writes OUTPUT/subset_fitness.{md,json} and subset_fitness.png (best-so-far full fitness
against item evaluations).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path


def run_arm(config, name: str, output: Path, subset: dict | None, generations: int) -> dict:
    """Run one arm; return its figures (item evaluations, seconds, best fitness, per-generation curve)."""
    from cmaam.core.config import from_dict
    from cmaam.search.evolution import run_search
    from cmaam.search.subset import SubsetSpec

    arm = copy.deepcopy(config)
    arm.output_dir = str(output / name)
    arm.generations = generations
    arm.fitness.subset = from_dict(SubsetSpec, subset, "subset") if subset else None
    load_before, started, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
    result = run_search(arm)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    curve, items = [], 0
    for summary in result.history:
        items += summary["item_evaluations"]
        curve.append((items, summary["best_so_far"]))
    return {"arm": name, "item_evaluations": metrics["item_evaluations"], "candidates_scored": metrics["evaluations"],
            "scoring_seconds": metrics["scoring_seconds"], "wall_seconds": wall, "cpu_seconds": cpu,
            "best_fitness": result.best_fitness,
            "best_metrics": {k[5:]: v for k, v in metrics.items() if k.startswith("best_") and k != "best_fitness"
                             and isinstance(v, (int, float))},
            "curve": curve, "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="evolve preset or YAML (default tiny)")
    parser.add_argument("--limit", type=int, default=16, help="items of the full set (MGSM limit; 0: the preset's)")
    parser.add_argument("--size", type=int, default=4, help="items in the subset")
    parser.add_argument("--rule", default="discrimination", choices=("irt", "discrimination", "random"))
    parser.add_argument("--rescore-top", type=int, default=1)
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--subset-generations", type=int, default=None,
                        help="generations of the subset arm (default: as the full arm; more: equal-cost comparisons)")
    parser.add_argument("--population", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: CPU seconds then measure work, not contention)")
    parser.add_argument("--output", default="results/bench/subset_fitness")
    args = parser.parse_args()

    import matplotlib
    import torch

    torch.set_num_threads(args.threads)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmaam.io.atomic import atomic_write_json, atomic_write_text
    from cmaam.search.evolution import load_config

    config = load_config(args.preset)
    config.generations, config.population, config.seed = args.generations, args.population, args.seed
    if args.limit:
        config.fitness.limit = args.limit
    config.save_model, config.progress, config.wandb_mode, config.figure_every = False, False, "disabled", 0
    output = Path(args.output)
    models = output / "models"  # built once, shared by both arms
    for entry in config.models:
        if entry.build is not None:
            entry.path = str((models / Path(entry.path).name).resolve())
    subset = {"size": args.size, "rule": args.rule, "rescore_top": args.rescore_top, "seed": args.seed}
    subset_generations = args.subset_generations or args.generations
    arms = [run_arm(config, "full", output, None, args.generations),
            run_arm(config, f"subset_{args.rule}", output, subset, subset_generations)]
    full, cheap = arms
    saved_items = 1 - cheap["item_evaluations"] / full["item_evaluations"]
    saved_seconds = 1 - cheap["scoring_seconds"] / full["scoring_seconds"]
    saved_cpu = 1 - cheap["cpu_seconds"] / full["cpu_seconds"]
    lines = [f"preset {args.preset}: {args.population} candidates per generation, seed {args.seed}, "
             f"subset {args.size} items ({args.rule}), rescore top {args.rescore_top}, {args.threads} torch thread(s)",
             "", "| arm | generations | item evaluations | candidates scored | scoring s | wall s | CPU s "
             "| best fitness (full set) | load average (1 min, start -> end) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for arm, generations in zip(arms, (args.generations, subset_generations)):
        lines.append(f"| {arm['arm']} | {generations} | {arm['item_evaluations']} | {arm['candidates_scored']} | "
                     f"{arm['scoring_seconds']:.1f} | {arm['wall_seconds']:.1f} | {arm['cpu_seconds']:.1f} | "
                     f"{arm['best_fitness']:.6g} | "
                     f"{arm['load_average'][0]:.2f} -> {arm['load_average'][1]:.2f} |")
    lines += ["", f"saved: {saved_items:.1%} of item evaluations, {saved_seconds:.1%} of scoring seconds, "
              f"{saved_cpu:.1%} of CPU seconds; "
              f"final best fitness {cheap['best_fitness']:.6g} vs {full['best_fitness']:.6g} "
              f"({cheap['best_fitness'] - full['best_fitness']:+.3g})"]
    table = "\n".join(lines) + "\n"
    print(table, end="")
    atomic_write_text(output / "subset_fitness.md", table)
    atomic_write_json(output / "subset_fitness.json", {"args": vars(args), "arms": arms, "saved_items": saved_items,
                                                        "saved_seconds": saved_seconds, "saved_cpu_seconds": saved_cpu})
    figure, axis = plt.subplots(figsize=(6, 3.8))
    for arm in arms:
        axis.step(*zip(*arm["curve"]), where="post", marker="o", label=arm["arm"])
    axis.set_xlabel("item evaluations so far")
    axis.set_ylabel("best fitness on the full set")
    axis.set_title(f"{args.preset}: subset fitness vs full scoring")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(output / "subset_fitness.png", dpi=120)


if __name__ == "__main__":
    main()
