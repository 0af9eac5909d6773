"""Two-model merges of a target T and a source S: shared names and shapes, per-tensor interpolation jobs.

Used by the CMAAM merge (per-group alphas) and the linear sweep (one alpha per output).
"""

from __future__ import annotations

import functools
import logging

import torch

from cmaam.core.errors import CMAAMError
from cmaam.io import CheckpointReader
from cmaam.merging.executor import TensorJob
from cmaam.merging.methods import get_method

logger = logging.getLogger(__name__)
INTERPOLATIONS = ("linear", "slerp")
ALPHAS_FILE = "alphas.yaml"  # written into every two-model merge: how the folder was made


def check_pair(source: CheckpointReader, target: CheckpointReader) -> list[str]:
    """Raise CMAAMError unless S and T share an architecture; return the names they share (target order)."""
    if source.model_type and target.model_type and source.model_type != target.model_type:
        raise CMAAMError(f"source is a {source.model_type!r} model but target is {target.model_type!r}: "
                         "both must have one architecture")
    common = [name for name in target.keys() if name in source]
    if not common:
        raise CMAAMError(f"{source.path} and {target.path} share no tensor names: not the same architecture")
    mismatched = [name for name in common if source.shape(name) != target.shape(name)]
    if mismatched:
        details = ", ".join(f"{n} {source.shape(n)} vs {target.shape(n)}" for n in mismatched[:3])
        more = f" and {len(mismatched) - 3} more" if len(mismatched) > 3 else ""
        raise CMAAMError(f"source and target shapes differ ({len(mismatched)} tensors: {details}{more})")
    return common


def interpolate(tensors: list[torch.Tensor], alpha: float, interp: str = "linear") -> torch.Tensor:
    """Merge [target, source] at ``alpha``: (1 - alpha) * T + alpha * S, or slerp from T (t=0) to S (t=1)."""
    target, source = tensors
    if interp == "slerp":
        return get_method("slerp")([source], target, t=alpha)
    return get_method("linear")([target, source], None, weight=[1.0 - alpha, alpha], normalize=False)


def check_interp(interp: str) -> None:
    """One-line error for an unknown interpolation."""
    if interp not in INTERPOLATIONS:
        raise CMAAMError(f"unknown --interp {interp!r} (choose {', '.join(INTERPOLATIONS)})")


def pair_jobs(target: CheckpointReader, alphas: dict[str, float], interp: str) -> list[TensorJob]:
    """One job per target tensor: interpolated when it has an alpha, else copied from the target.

    Linear interpolation is elementwise, so its jobs (and the copies) may run in row blocks; slerp needs
    whole tensors (it normalises by their norms).
    """
    jobs = []
    for name in target.keys():
        if name in alphas:
            merge = functools.partial(interpolate, alpha=alphas[name], interp=interp)
            linear = interp == "linear"  # a lerp: row by row, and NaN/Inf in an input reaches the output
            jobs.append(TensorJob(name, [("target", name), ("source", name)], merge, row_local=linear,
                                  propagates_nonfinite=linear))
        else:
            jobs.append(TensorJob(name, [("target", name)], row_local=True))
    return jobs


def report_unmatched(only_in_target: list[str], only_in_source: list[str], not_floating: list[str],
                     where: str) -> None:
    """Log how many tensors were not interpolated and why (never dropped silently)."""
    if only_in_target or not_floating:
        logger.info("%d tensor(s) only in the target and %d non-floating tensor(s) were kept from the target "
                    "(listed in %s)", len(only_in_target), len(not_floating), where)
    if only_in_source:
        shown = ", ".join(only_in_source[:3]) + (" ..." if len(only_in_source) > 3 else "")
        logger.info("%d tensor(s) only in the source were skipped: %s (listed in %s)", len(only_in_source), shown,
                    where)
