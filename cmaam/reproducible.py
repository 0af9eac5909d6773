"""Run one module reproducibly: a fixed number of torch threads, deterministic kernels, seeded generators.

``python -m cmaam.reproducible --threads 1 --seed 0 -m finetune.lora_vqa ARGS...`` configures the
process (``cmaam.core.reproducible.configure``, what the experiment pipeline applies before each of its
steps), then runs the module as ``python -m`` would: a step rerun by hand computes what the pipeline did.
"""

from __future__ import annotations

import argparse
import importlib.util
import runpy
import sys
from typing import Sequence

from cmaam.core.errors import CMAAMError
from cmaam.core.reproducible import configure


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cmaam.reproducible", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, help="seed random, numpy and torch before the step starts")
    parser.add_argument("--threads", type=int, help="torch threads, intra- and inter-op (default: torch's)")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                        help="deterministic torch kernels (default on)")
    parser.add_argument("-m", dest="module", nargs=argparse.REMAINDER, required=True, metavar="MODULE ARGS",
                        help="run a module as python -m would; everything after it is its arguments")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.module:
        raise CMAAMError("name the step to run: -m MODULE [ARGS...]")
    module, arguments = args.module[0], args.module[1:]
    if not _module_exists(module):
        raise CMAAMError(f"no module named {module}")
    configure(args.seed, args.threads, args.deterministic)
    sys.argv = [module, *arguments]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    from cmaam.core.cli import run_cli

    run_cli(main)
