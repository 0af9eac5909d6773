"""Reproducible computation: a fixed number of torch threads, deterministic kernels, seeded generators.

``configure`` applies all three in the running process; the experiment pipeline calls it before each
step, ``python -m cmaam.reproducible`` before running a module, and ``finetune.lora_vqa --threads``
uses ``set_threads``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from typing import Iterator, Mapping

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


@contextlib.contextmanager
def preserved(environment: Mapping[str, str] | None = None) -> Iterator[None]:
    """Undo ``configure`` when the block ends: torch's intra-op thread count, deterministic mode, cuDNN flags and
    the environment variables it sets (the inter-op count cannot be changed back once set). ``environment``:
    more variables set for the block, and put back after it.

    For code that configures steps inside a longer-lived process (the experiment pipeline, tests); the random
    generators are not restored.
    """
    import torch

    environment = dict(environment or {})
    saved = {name: os.environ.get(name) for name in (*THREAD_VARIABLES, "CUBLAS_WORKSPACE_CONFIG", *environment)}
    os.environ.update(environment)
    threads = torch.get_num_threads()
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
