"""Run one step reproducibly: a fixed number of torch threads, deterministic kernels, seeded generators.

``python -m cmaam.reproducible --threads 1 --seed 0 -m finetune.lora_vqa ARGS...`` configures the
process, then runs the module as ``python -m`` would. The experiment pipeline starts every step this way,
so each step of a run computes with the same settings.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import random
import runpy
import sys
from typing import Sequence

from cmaam.core.errors import CMAAMError

logger = logging.getLogger(__name__)
# Read by the OpenMP, MKL and OpenBLAS runtimes when they start (torch, numpy, scipy).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# cuBLAS is deterministic only with a fixed workspace (PyTorch "Reproducibility" notes).
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def set_threads(threads: int) -> None:
    """Use ``threads`` torch threads, intra-op and inter-op (the inter-op count can only be set once)."""
    import torch

    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # already set, or parallel work already started in this process
            logger.warning("torch inter-op threads stay at %d (asked for %d: too late in this process)",
                           torch.get_num_interop_threads(), threads)


def configure(seed: int | None = None, threads: int | None = None, deterministic: bool = True) -> None:
    """Fix torch's threads, switch on deterministic kernels and seed random, numpy and torch.

    Call it before any other work. Deterministic mode warns, instead of failing, on an operation that
    has no deterministic implementation (some CUDA kernels), so a long GPU run is not stopped by it.
    """
    if threads is not None:
        if threads < 1:
            raise CMAAMError(f"--threads must be at least 1, got {threads}")
        for variable in THREAD_VARIABLES:
            os.environ[variable] = str(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
    import numpy
    import torch

    if threads is not None:
        set_threads(threads)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if seed is not None:
        random.seed(seed)
        numpy.random.seed(seed)
        torch.manual_seed(seed)  # every device's generator


def launcher_arguments(seed: int | None, threads: int | None, deterministic: bool) -> list[str]:
    """The ``python -m cmaam.reproducible`` prefix that runs a step with these settings."""
    return ["-m", "cmaam.reproducible", *(["--seed", str(seed)] if seed is not None else []),
            *(["--threads", str(threads)] if threads is not None else []),
            *([] if deterministic else ["--no-deterministic"])]


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
