"""Generalized task arithmetic (mergekit's generalized_task_arithmetic.py): the shared core of
task_arithmetic, ties, dare_linear, dare_ties, breadcrumbs, breadcrumbs_ties, della and della_linear.

result = base + lambda * sum_i(w_i * m_i * sparsify(x_i - base)) / divisor, where the consensus mask m_i
keeps entries agreeing with the sign of the weighted sum (TIES) and the divisor is the sum of the
(masked) weights when ``normalize``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from cmaam.core.errors import CMAAMError
from cmaam.merging.methods.common import check_shapes, per_model
from cmaam.merging.methods.registry import Parameter, register
from cmaam.merging.methods.sparsify import (DeltaMagnitudes, TopCut, magnitude_keep, make_generator, sparsify, top_cut,
                                            top_cut_streamed)

CONSENSUS = ("sum", "count")
RANDOM_SPARSIFICATIONS = ("random", "della_magprune")
MERGE_CHUNK = 1 << 18  # elements merged at a time by the chunked TIES path (its working set stays in cache)
FUSED_MAX_MODELS = 4  # torch sums up to 4 stacked rows in order, as the fused kernel does (fused.py)


def majority_sign(deltas: torch.Tensor, method: str = "sum") -> torch.Tensor:
    """+1 or -1 per entry of the stacked (weighted) deltas' first dimension: the sign they elect, ties to +.

    ``sum``: the sign of the summed deltas (TIES paper); ``count``: the more frequent sign. The sums start
    from +0, so an exact zero is +0 and copysign gives the +1 of a tie.
    """
    if method == "sum":
        votes = deltas.sum(dim=0)
    elif method == "count":
        votes = deltas.sign().sum(dim=0)
    else:
        raise CMAAMError(f"unknown consensus method {method!r} (one of {', '.join(CONSENSUS)})")
    return torch.copysign(torch.ones((), dtype=deltas.dtype, device=deltas.device), votes)


def consensus_mask(deltas: torch.Tensor, method: str = "sum") -> torch.Tensor:
    """Boolean mask of the entries of the stacked (weighted) deltas whose sign matches the majority sign.

    ``sum``: the sign of the summed deltas (TIES paper); ``count``: the more frequent sign. Ties go to +.
    A zero entry has no sign and never matches.
    """
    return deltas * majority_sign(deltas, method) > 0


def generalized_task_arithmetic(
    tensors: list[torch.Tensor],
    base: torch.Tensor,
    *,
    weight: float | list[float],
    density: float | list[float] = 1.0,
    normalize: bool = False,
    rescale: bool = False,
    lambda_: float = 1.0,
    int8_mask: bool = False,
    gamma: float | list[float] = 0.01,
    epsilon: float | list[float] = 0.15,
    seed: int = 0,
    rescale_mode: str = "l1",
    sparsification: str | None = None,
    consensus: str | None = None,
    method: str = "task_arithmetic",
) -> torch.Tensor:
    """Merge task vectors ``tensors[i] - base`` as mergekit's GeneralizedTaskArithmeticMerge does.

    ``int8_mask`` only saves memory in mergekit (the mask values are identical) and is accepted for
    config compatibility. Inputs may be in any floating dtype (as stored); the merge is computed in float32.
    Random sparsifications draw from one generator seeded with ``seed``, consumed model by model in order.
    """
    if base is None:
        raise CMAAMError(f"{method}: a base model is required")
    if not tensors:
        return base.float()
    check_shapes(method, tensors, base)
    count = len(tensors)
    weights_list = per_model(method, "weight", weight, count)
    densities = per_model(method, "density", density, count)
    gammas = per_model(method, "gamma", gamma, count)
    epsilons = per_model(method, "epsilon", epsilon, count)
    if sparsification in RANDOM_SPARSIFICATIONS:
        if rescale_mode not in ("l1", "inverse_density"):
            raise CMAAMError(f"{method}: rescale_mode must be 'l1' (mergekit) or 'inverse_density', "
                             f"not {rescale_mode!r}")
        generator = make_generator(seed, base.device)
    else:
        rescale_mode, generator = "l1", None

    if sparsification == "magnitude" and not rescale:
        return _magnitude_chunks(tensors, base, weights_list, densities, normalize, lambda_, consensus)
    tensors, base = [tensor.float() for tensor in tensors], base.float()  # inputs may come as stored

    deltas = base.new_empty((count, *base.shape))
    for index, tensor in enumerate(tensors):
        delta = tensor - base
        if sparsification:
            delta = sparsify(delta, densities[index], sparsification, gamma=gammas[index], epsilon=epsilons[index],
                             rescale=rescale_mode if rescale else None, generator=generator)
        deltas[index] = delta
        del delta
    weights = torch.tensor(weights_list, dtype=deltas.dtype, device=deltas.device)
    while deltas.dim() > weights.dim():
        weights.unsqueeze_(-1)
    return _combine(base, deltas, weights, normalize, lambda_, consensus)


def _combine(base: torch.Tensor, deltas: torch.Tensor, weights: torch.Tensor, normalize: bool, lambda_: float,
             consensus: str | None) -> torch.Tensor:
    """base + lambda * the (consensus-masked, normalized) weighted sum of the stacked sparsified deltas.

    The consensus sum is taken as majority * sum(max(delta * majority, 0)): the entries agreeing with the
    majority are the positive ones of delta * majority, and negating is exact, so this equals summing the
    agreeing deltas (mergekit's (deltas * mask).sum(0)) bit for bit, in fewer passes and without a bool mask.
    """
    deltas.mul_(weights)
    if consensus:
        majority = majority_sign(deltas, consensus)
        agreeing = deltas.mul_(majority).clamp_(min=0)  # |delta| where it agrees with the majority, else 0
        mixed = agreeing.sum(dim=0).mul_(majority)
        divisor = agreeing.sign_().mul_(weights).sum(dim=0) if normalize else None
        if divisor is not None:  # 0 -> 1; a comparison written as float is many times faster than a bool mask
            divisor.add_(torch.eq(divisor, 0, out=torch.empty_like(divisor)))
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0) if normalize else None
        if divisor is not None:
            divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed /= divisor
    if lambda_ != 1:
        mixed *= lambda_
    return (base + mixed).to(base.dtype)


def _magnitude_chunks(tensors: list[torch.Tensor], base: torch.Tensor, weights: list[float], densities: list[float],
                      normalize: bool, lambda_: float, consensus: str | None) -> torch.Tensor:
    """Magnitude-sparsified task arithmetic (TIES) in two steps, equal to the whole-tensor computation bit for bit.

    Each model's top-k is found once as a cut over the whole tensor's delta magnitudes; then the deltas are
    recomputed, masked and combined entry by entry: in one compiled pass (``fused``) for TIES' sum consensus on
    CPU, reading float32 or bfloat16 inputs as stored, else in float32 flat chunks that stay in the CPU cache,
    instead of a dozen passes over whole stacked tensors.
    """
    fused = None
    if consensus == "sum" and len(tensors) <= FUSED_MAX_MODELS and all(
            tensor.device.type == "cpu" for tensor in (base, *tensors)):
        from cmaam.merging.methods import fused  # numba, imported only when needed
    if fused is None or not fused.usable(tensors, base):  # inputs may come as stored, in any float dtype
        tensors, base = [tensor.float() for tensor in tensors], base.float()
    count, flat_base = base.numel(), base.reshape(-1)
    flats = [tensor.reshape(-1) for tensor in tensors]
    cuts = []
    for flat, density in zip(flats, densities):
        if 0 < density < 1 and count:
            magnitudes = fused.FusedDeltaMagnitudes(flat, flat_base) if fused else DeltaMagnitudes(
                flat, flat_base, MERGE_CHUNK)
            keep = magnitude_keep(count, density)
            cuts.append(top_cut_streamed(magnitudes, keep) or top_cut(magnitudes.values(slice(None)), keep))
        else:
            cuts.append(TopCut(-math.inf, count) if density >= 1 else None)  # every entry, or none
    if fused:
        return fused.ties_sum(tensors, base, weights, cuts, normalize, lambda_)
    weight_column = torch.tensor(weights, dtype=base.dtype, device=base.device).unsqueeze(-1)
    result = torch.empty(count, dtype=base.dtype, device=base.device)
    buffer = base.new_empty((len(flats), min(MERGE_CHUNK, count)))
    for start in range(0, count, MERGE_CHUNK):
        stop = min(start + MERGE_CHUNK, count)
        deltas = buffer[:, :stop - start]
        for delta, flat, cut in zip(deltas, flats, cuts):
            torch.sub(flat[start:stop], flat_base[start:stop], out=delta)
            if cut is None:
                delta.zero_()
            elif cut.equal_before < count or cut.threshold > -math.inf:
                cut.zero_dropped_(delta, start)
        result[start:stop] = _combine(flat_base[start:stop], deltas, weight_column, normalize, lambda_, consensus)
    return result.reshape(base.shape)


def task_arithmetic_parameters(normalize: bool, rescale: bool, sparsification: str | None) -> tuple[Parameter, ...]:
    """The parameters mergekit declares for a generalized-task-arithmetic method, with their ranges."""
    parameters = [
        Parameter("weight", default=None, per_model=True, required=True),
        Parameter("density", default=1.0, per_model=True, minimum=0.0, maximum=1.0),
        Parameter("normalize", default=normalize),
        Parameter("rescale", default=rescale),
        Parameter("lambda_", default=1.0),
        Parameter("int8_mask", default=False),
    ]
    if sparsification == "magnitude_outliers":
        parameters.append(Parameter("gamma", default=0.01, per_model=True, minimum=0.0, maximum=1.0))
    if sparsification == "della_magprune":
        parameters.append(Parameter("epsilon", default=0.15, per_model=True, minimum=0.0, maximum=0.5))
    if sparsification in RANDOM_SPARSIFICATIONS:
        parameters.append(Parameter("seed", default=0, minimum=0, maximum=2**63 - 1))
        parameters.append(Parameter("rescale_mode", default="l1"))
    return tuple(parameters)


def define_task_arithmetic(name: str, summary: str, *, normalize: bool, rescale: bool,
                           sparsification: str | None = None, consensus: str | None = None
                           ) -> Callable[..., torch.Tensor]:
    """Register one generalized-task-arithmetic variant under ``name`` (defaults as mergekit's registry)."""

    def merge(tensors: list[torch.Tensor], base: torch.Tensor, **parameters) -> torch.Tensor:
        return generalized_task_arithmetic(tensors, base, sparsification=sparsification, consensus=consensus,
                                           method=name, **parameters)

    merge.__name__ = merge.__qualname__ = name
    merge.__doc__ = summary
    register(name, parameters=task_arithmetic_parameters(normalize, rescale, sparsification), requires_base=True,
             row_local=sparsification is None and consensus is None,  # no per-tensor top-k, mask or sign vote
             takes_stored=True)(merge)
    return merge
