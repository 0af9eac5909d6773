"""``python -m cmaam.evolve --config CONFIG``: CMA-ES search of a merge recipe against MGSM."""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
from cmaam.core.errors import CMAAMError
from cmaam.search.evolution import load_config, run_search


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.evolve", description=__doc__)
    parser.add_argument("--config", required=True,
                        help="evolve YAML, or a preset of cmaam/configs/evolve (tiny, ko_mistral_wizardmath, ...)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    parser.add_argument("--workers", type=int, help="parallel evaluators (Ray actors; 1 = sequential)")
    parser.add_argument("--ray-address", help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--gpus-per-worker", type=float, help="GPUs reserved per Ray worker")
    parser.add_argument("--output-dir", help="run folder (default: results/<name>)")
    parser.add_argument("--generations", type=int, help="number of generations (may grow on --resume)")
    parser.add_argument("--population", type=int, help="candidates per generation (default: cma's 4 + 3 ln genes)")
    parser.add_argument("--seed", type=int, help="seed of the search (same seed -> same run)")
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--wandb-mode", choices=("offline", "online", "disabled"), help="W&B logging (default offline)")
    parser.add_argument("--no-save-model", action="store_true", help="write the recipe but not the best model")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = load_config(args.config)
    overrides = {"workers": args.workers, "ray_address": args.ray_address, "gpus_per_worker": args.gpus_per_worker,
                 "output_dir": args.output_dir, "generations": args.generations, "population": args.population,
                 "seed": args.seed, "device": args.device, "wandb_mode": args.wandb_mode}
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    if args.no_save_model:
        config.save_model = False
    if args.no_progress:
        config.progress = False
    for key in ("generations", "population", "workers"):
        value = getattr(config, key)
        if value is not None and value < (2 if key == "population" else 1):
            raise CMAAMError(f"--{key} must be at least {2 if key == 'population' else 1}, got {value}")
    result = run_search(config, resume=args.resume)
    print(f"best fitness {result.best_fitness:.6g}; run folder {result.run_dir} "
          f"(merge_config.yaml, best_genome.json, convergence.png{', best_model/' if config.save_model else ''})")
    return 0


if __name__ == "__main__":
    run_cli(main)
