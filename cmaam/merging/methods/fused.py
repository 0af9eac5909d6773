"""Fused CPU kernels (numba) for TIES' two passes over each model: counting magnitudes at a cut, and the combine.

Each kernel visits every entry once in compiled code instead of a dozen whole-tensor torch passes, reading
float32 or bfloat16 inputs as stored (bfloat16 widened to float32 exactly, in cache, block by block), and does
the same float32 operations in the same order as the torch path in ``generalized.py``, so the result is
the same bit for bit (tests/merging/test_methods_selection.py checks it). Numba compiles them on first use
and caches the machine code beside this file (or in its user cache where that folder is read-only).
``generalized.FUSED_MAX_MODELS``: torch sums up to four stacked rows one after another, as the kernel does;
beyond, it pairs them, and the torch path is used.
"""

from __future__ import annotations

import math
from typing import Sequence

import numba
import numpy
import torch

from cmaam.merging.methods.sparsify import DeltaMagnitudes, TopCut

BLOCK = 1 << 12  # entries per block: the kernels' working set stays in cache; equal magnitudes counted per block


@numba.njit(nogil=True, cache=True)
def _block(source, start, stop, bits):  # pragma: no cover - compiled
    """source[start:stop] as float32 values: ``source`` holds float32's bits (uint32, viewed as they are) or
    bfloat16's (uint16, widened into ``bits``: a bfloat16 is the upper half of the float32 of equal value)."""
    values = source[start:stop]
    if source.itemsize == 4:
        return values.view(numpy.float32)
    for index in range(stop - start):
        bits[index] = numpy.uint32(values[index]) << numpy.uint32(16)
    return bits[:stop - start].view(numpy.float32)


@numba.njit(nogil=True, cache=True)
def _count_below_equal(model, base, value, equal_counts):  # pragma: no cover - compiled
    """How many entries of |model - base| are below ``value``; ``equal_counts[b]`` gets how many equal it in
    block b of ``BLOCK`` entries (float32 value; arrays as ``_block`` takes them)."""
    model_bits, base_bits = numpy.empty(BLOCK, numpy.uint32), numpy.empty(BLOCK, numpy.uint32)
    below = 0
    size = base.shape[0]
    for block in range(equal_counts.shape[0]):
        start, stop = block * BLOCK, min((block + 1) * BLOCK, size)
        values, reference = _block(model, start, stop, model_bits), _block(base, start, stop, base_bits)
        block_below, block_equal = numpy.int32(0), numpy.int32(0)  # 32-bit counters: the loop vectorizes
        for index in range(stop - start):
            magnitude = abs(values[index] - reference[index])
            block_below += numpy.int32(magnitude < value)
            block_equal += numpy.int32(magnitude == value)
        below += block_below
        equal_counts[block] = block_equal
    return below


@numba.njit(nogil=True, cache=True)
def _ties_sum(models, base, weights, thresholds, equal_before, normalize, lambda_, out):  # pragma: no cover
    """out = base + lambda * (sum of the agreeing weighted trimmed deltas) / (sum of their weights), per entry.

    A delta is kept when its magnitude is above its model's threshold, or equal to it at a position below
    ``equal_before`` (``TopCut``; a negative ``equal_before`` drops every entry); dropped ones are +0. The
    elected sign is copysign(1, weighted sum), the sum starting at +0 (ties to +). A NaN delta is kept and
    agrees, so the entry is NaN as in the torch path. Block by block (inputs as ``_block`` takes them), each
    loop over one block's entries, so they vectorize; every sum adds the models in order, as torch's sum over
    up to four stacked rows.
    """
    count = len(models)
    size = base.shape[0]
    zero, one = numpy.float32(0.0), numpy.float32(1.0)
    model_bits, base_bits = numpy.empty(BLOCK, numpy.uint32), numpy.empty(BLOCK, numpy.uint32)
    deltas = numpy.empty((count, BLOCK), dtype=numpy.float32)
    majority = numpy.empty(BLOCK, dtype=numpy.float32)
    mixed = numpy.empty(BLOCK, dtype=numpy.float32)
    divisor = numpy.empty(BLOCK, dtype=numpy.float32)
    for start in range(0, size, BLOCK):
        stop = min(start + BLOCK, size)
        length = stop - start
        reference = _block(base, start, stop, base_bits)
        majority[:] = zero  # the weighted sum, then its sign
        for model in range(count):
            values, row = _block(models[model], start, stop, model_bits), deltas[model]
            threshold, before, weight = thresholds[model], equal_before[model] - start, weights[model]
            keep_none = equal_before[model] < 0
            for index in range(length):
                delta = values[index] - reference[index]
                magnitude = abs(delta)
                dropped = keep_none or magnitude < threshold or (magnitude == threshold and index >= before)
                delta = (zero if dropped else delta) * weight
                row[index] = delta
                majority[index] = majority[index] + delta
        for index in range(length):
            majority[index] = numpy.float32(math.copysign(1.0, majority[index]))
        mixed[:] = zero
        divisor[:] = zero
        for model in range(count):
            row, weight = deltas[model], weights[model]
            for index in range(length):
                agreeing = row[index] * majority[index]
                taken = not agreeing <= zero  # agrees, or NaN
                mixed[index] = mixed[index] + (agreeing if taken else zero)
                divisor[index] = divisor[index] + (weight if taken else zero)
        for index in range(length):
            merged = mixed[index] * majority[index]
            if normalize:
                merged = merged / (one if divisor[index] == zero else divisor[index])
            if lambda_ != one:
                merged = merged * lambda_
            out[start + index] = reference[index] + merged


STORED = {torch.float32: (torch.int32, numpy.uint32), torch.bfloat16: (torch.int16, numpy.uint16)}


def usable(tensors: Sequence[torch.Tensor], base: torch.Tensor) -> bool:
    """Whether the kernels take these CPU inputs as they are: float32 or bfloat16, the models of one dtype
    (others are converted to float32 first)."""
    return base.dtype in STORED and all(tensor.dtype == tensors[0].dtype for tensor in tensors) and (
        not tensors or tensors[0].dtype in STORED)


def flat_array(tensor: torch.Tensor) -> numpy.ndarray:
    """A flat numpy view of a float32 or bfloat16 CPU tensor's bits (copied only if not contiguous); the
    kernels only read it."""
    signed, unsigned = STORED[tensor.dtype]
    return tensor.detach().reshape(-1).contiguous().view(signed).numpy().view(unsigned)


class FusedDeltaMagnitudes(DeltaMagnitudes):
    """``DeltaMagnitudes`` counted in one compiled pass over the whole tensor, equal values per block of
    ``BLOCK`` entries (the n-th equal one is then searched in its block only)."""

    def __init__(self, model: torch.Tensor, base: torch.Tensor):
        super().__init__(model, base, BLOCK)
        self.model_array, self.base_array = flat_array(model), flat_array(base)

    def count_below_equal(self, value: float) -> tuple[int, int]:
        equal_counts = numpy.empty(-(-self.count // BLOCK), dtype=numpy.int64)
        below = _count_below_equal(self.model_array, self.base_array, numpy.float32(value), equal_counts)
        self.equal_counts = (value, equal_counts)
        return int(below), int(equal_counts.sum())


def ties_sum(models: list[torch.Tensor], base: torch.Tensor, weights: list[float], cuts: list[TopCut | None],
             normalize: bool, lambda_: float) -> torch.Tensor:
    """TIES (sum consensus) of float32 or bfloat16 CPU tensors (``usable``), one cut per model (None: keeps
    nothing); float32, of base's shape."""
    out = numpy.empty(base.numel(), dtype=numpy.float32)
    thresholds = numpy.array([cut.threshold if cut else math.inf for cut in cuts], dtype=numpy.float32)
    equal_before = numpy.array([cut.equal_before if cut else -1 for cut in cuts], dtype=numpy.int64)
    _ties_sum(tuple(flat_array(model) for model in models), flat_array(base), numpy.array(weights, dtype=numpy.float32),
              thresholds, equal_before, bool(normalize), numpy.float32(lambda_), out)
    return torch.from_numpy(out).reshape(base.shape)
