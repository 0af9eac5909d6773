"""Watch a CMA-ES run: ``python -m cmaam.monitor RUN_DIR [--watch]`` prints best/mean fitness per"""

from __future__ import annotations

import argparse
from typing import Sequence

from cmaam.core.cli import run_cli
from cmaam.search.monitor import monitor


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cmaam.monitor", description=__doc__)
    parser.add_argument("run_dir", help="the run folder of python -m cmaam.evolve")
    parser.add_argument("--watch", action="store_true", help="keep printing new generations until the run is done")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between checks with --watch")
    parser.add_argument("--no-plot", action="store_true", help="do not (re)draw convergence.png")
    args = parser.parse_args(argv)
    monitor(args.run_dir, watch=args.watch, interval=args.interval, plot=not args.no_plot)
    return 0


if __name__ == "__main__":
    run_cli(main)
