"""``python -m cmaam.evolve --config CONFIG``: CMA-ES search of a merge recipe (parameter space, data-flow
path or CMAAM alphas of a VLM pair) against MGSM or VQA."""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
from cmaam.core.options import add_execution_options
from cmaam.search.evolution import load_config, run_search


OPTIONS = ("device", "dtype", "seed", "allow_pickle", "trust_remote_code", "progress")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.evolve", description=__doc__)
    parser.add_argument("--config", required=True,
                        help="evolve YAML, or a preset of cmaam/configs/evolve (tiny, ko_mistral_wizardmath, ...)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set fitness.limit=20 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the run in the output folder")
    parser.add_argument("--workers", type=int, help="parallel evaluators (Ray actors; 1 = sequential)")
    parser.add_argument("--ray-address", help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--gpus-per-worker", type=float, help="GPUs reserved per Ray worker")
    parser.add_argument("--output-dir", help="run folder (default: results/<name>)")
    parser.add_argument("--generations", type=int, help="number of generations (may grow on --resume)")
    parser.add_argument("--population", type=int, help="candidates per generation (default: cma's 4 + 3 ln genes)")
    parser.add_argument("--wandb-mode", choices=("offline", "online", "disabled"), help="W&B logging (default offline)")
    parser.add_argument("--no-save-model", dest="save_model", action="store_false", default=None,
                        help="write the recipe but not the best model")
    add_execution_options(parser, OPTIONS, from_config=True,
                          help={"seed": "seed of the search (same seed -> same run)"})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = ("workers", "ray_address", "gpus_per_worker", "output_dir", "generations", "population", "wandb_mode",
             "save_model", *OPTIONS)
    settings = {key: getattr(args, key) for key in flags if getattr(args, key, None) is not None}
    config = load_config(args.config, args.set, settings)
    result = run_search(config, resume=args.resume)
    print(f"best fitness {result.best_fitness:.6g}; run folder {result.run_dir} "
          f"(merge_config.yaml, best_genome.json, convergence.png{', best_model/' if config.save_model else ''})")
    return 0


if __name__ == "__main__":
    run_cli(main)
