"""Sparsification of task vectors (as mergekit's sparsify.py), shared by ties, dare, breadcrumbs and della.

Random masks draw from an explicit ``torch.Generator`` so a seed gives byte-identical output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy
import torch

from cmaam.core.errors import CMAAMError

SPARSIFICATIONS = ("magnitude", "random", "magnitude_outliers", "della_magprune")
RESCALES = ("l1", "l2", "linf", "inverse_density")
SELECTION_SAMPLE = 1 << 16  # entries sampled to bracket a k-th smallest value before the exact selection


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (CPU streams equal ``torch.manual_seed(seed)``'s).

    Whole-model callers pass a per-tensor seed (``cmaam.merging.planner.tensor_seed``): one fixed seed for
    every tensor would repeat the same drop mask on same-shaped tensors.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def rescaled_masked_tensor(tensor: torch.Tensor, mask: torch.Tensor, norm: str | None,
                           density: float = 1.0, eps: float = 1e-7) -> torch.Tensor:
    """Apply ``mask`` and rescale so the chosen norm of the result matches the input's.

    ``inverse_density`` divides by the keep probability instead (DARE paper; unbiased in expectation).
    """
    masked = tensor * mask
    if norm is None:
        return masked
    if norm == "inverse_density":
        return masked / density if density > 0 else masked
    if norm == "l1":
        before, after = tensor.abs().sum(), masked.abs().sum()
    elif norm == "l2":
        before, after = tensor.norm(), masked.norm()
    elif norm == "linf":
        before, after = tensor.abs().max(), masked.abs().max()
    else:
        raise CMAAMError(f"unknown rescale norm {norm!r} (one of {', '.join(RESCALES)})")
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def selection_magnitudes(tensor: torch.Tensor) -> torch.Tensor:
    """Flattened magnitudes, in float32 on CPU (half-precision selection there is slow or unsupported)."""
    magnitudes = tensor.abs().reshape(-1)
    return magnitudes.float() if magnitudes.device.type == "cpu" else magnitudes


def kth_smallest(values: torch.Tensor, k: int) -> float:
    """The k-th smallest entry (1-based) of a flat tensor: exactly ``torch.kthvalue(values, k)``'s value."""
    return kth_smallest_counted(values, k)[0]


def kth_smallest_counted(values: torch.Tensor, k: int) -> tuple[float, int, int]:
    """(v, below, equal): the k-th smallest entry v of a flat tensor, and how many entries are below and equal to it.

    v is exactly ``torch.kthvalue(values, k)``'s value. On a large tensor, a strided sample guides the search.
    Where the sample repeats its candidate (16-bit weights give task vectors few distinct values, and one of
    them may fill a fifth of the tensor), two counts usually confirm it. Otherwise the sample's quantiles at
    k/n plus or minus a few standard errors bracket v; one vectorised pass counts the entries below the bracket
    and gathers the few inside it, and the exact selection runs on those only (kthvalue on the whole tensor
    copies it and runs single-threaded). Should the bracket miss (an adversarial ordering), the whole tensor
    is searched: the value is the same.
    """
    count = values.numel()
    if count <= 4 * SELECTION_SAMPLE:
        return _counted(values, torch.kthvalue(values, k).values.item())
    sample = values[::count // SELECTION_SAMPLE]
    size = sample.numel()
    candidate = repeated_candidate(sample, k, count)
    if candidate is not None:
        value, below, equal = _counted(values, candidate)
        if below < k <= below + equal:
            return value, below, equal
    margin = 6 * math.sqrt(size) + 16
    low_rank, high_rank = int(k / count * size - margin), int(k / count * size + margin) + 1
    low = torch.kthvalue(sample, low_rank).values.item() if low_rank >= 1 else -math.inf
    high = torch.kthvalue(sample, high_rank).values.item() if high_rank <= size else math.inf
    below = int(torch.count_nonzero(values < low))
    inside = values[(values >= low) & (values <= high)]
    if below < k <= below + inside.numel():
        value, inside_below, equal = _counted(inside, torch.kthvalue(inside, k - below).values.item())
        return value, below + inside_below, equal
    return _counted(values, torch.kthvalue(values, k).values.item())


def _counted(values: torch.Tensor, value: float) -> tuple[float, int, int]:
    """(value, entries below it, entries equal to it)."""
    return (value, *count_below_equal(values, value))


def repeated_candidate(sample: torch.Tensor, k: int, count: int) -> float | None:
    """The sample's estimate of the k-th smallest of ``count`` values, when the sample holds it more than once
    (then it is likely the k-th value itself: two counts can prove it); else None."""
    candidate = torch.kthvalue(sample, min(sample.numel(), max(1, round(k / count * sample.numel())))).values.item()
    return candidate if int(torch.count_nonzero(sample == candidate)) > 1 else None


def rank_window(values: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Boolean mask of the entries at positions [start, stop) of a stable ascending sort of ``values``.

    Same set as ``torch.sort(values, stable=True).indices[start:stop]`` (equal values ordered by index)
    but found with two selections (``kth_smallest``) instead of a full sort: many times faster on large tensors.
    """
    count = values.numel()
    start, stop = max(0, start), min(count, stop)
    if start >= stop:
        return torch.zeros(count, dtype=torch.bool, device=values.device)
    lower = kth_smallest(values, start + 1) if start > 0 else None
    upper = kth_smallest(values, stop) if stop < count else None
    if lower is None and upper is None:
        return torch.ones(count, dtype=torch.bool, device=values.device)
    if upper is None:
        mask = values > lower
    elif lower is None:
        mask = values < upper
    else:
        mask = (values > lower) & (values < upper)
    for boundary in {bound for bound in (lower, upper) if bound is not None}:
        # equal values sit at sorted positions before, before + 1, ... in index order
        before = int(torch.count_nonzero(values < boundary))
        first, last = max(0, start - before), max(0, stop - before)
        if last > first:
            ties = true_positions(values == boundary)
            mask[ties[first:last]] = True
    return mask


@dataclass(frozen=True)
class TopCut:
    """The ``keep`` largest entries of a flat tensor, told by a threshold: every entry above it, and of the
    entries equal to it those at flat positions below ``equal_before`` (lower positions first, as a stable sort).

    Lets a caller apply a whole tensor's top-k to any flat slice of it (``mask``) without holding the whole
    mask: TIES computes the cut per model once, then merges in cache-sized chunks.
    """

    threshold: float
    equal_before: int

    def mask(self, values: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Boolean mask of the kept entries of ``values``, the flat slice starting at position ``offset``."""
        if self.equal_before <= offset:
            return values > self.threshold
        if self.equal_before >= offset + values.numel():
            return values >= self.threshold
        positions = torch.arange(offset, offset + values.numel(), device=values.device)
        return (values > self.threshold) | ((values == self.threshold) & (positions < self.equal_before))

    def zero_dropped_(self, deltas: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Zero, in place, the entries of ``deltas`` (a flat slice at ``offset`` of the values whose magnitudes
        the cut was taken from) that the cut drops; returns ``deltas``.

        In float32, where the magnitudes are exactly ``deltas.abs()``, a slice cut by the threshold alone is one
        fused ``hardshrink`` pass (x where |x| > t, else 0; >= t is > the next float below t), a dozen times
        faster than building and applying a mask. A dropped entry becomes +0 rather than a signed zero.
        """
        if deltas.dtype != torch.float32:
            return deltas.masked_fill_(~self.mask(selection_magnitudes(deltas), offset).view(deltas.shape), 0)
        flat = deltas.view(-1)
        split = min(max(self.equal_before - offset, 0), flat.numel())  # entries before it keep magnitudes >= t
        if split:
            at_least = float(torch.nextafter(torch.tensor(self.threshold, dtype=torch.float32),
                                             torch.tensor(-math.inf)))
            torch.hardshrink(flat[:split], at_least, out=flat[:split])
        if split < flat.numel():
            torch.hardshrink(flat[split:], self.threshold, out=flat[split:])
        return deltas


def top_cut(values: torch.Tensor, keep: int) -> TopCut:
    """The cut keeping the ``keep`` (>= 1) largest entries of a flat tensor, equal values in position order."""
    count = values.numel()
    if keep >= count:
        return TopCut(-math.inf, count)
    threshold, below, equal = kth_smallest_counted(values, count - keep + 1)  # the keep-th largest
    needed = keep - (count - below - equal)  # entries equal to the threshold to keep, the first ones
    if needed >= equal:
        return TopCut(threshold, count)
    return TopCut(threshold, nth_true_position(values == threshold, needed) + 1)


class DeltaMagnitudes:
    """|model - base| of two flat float tensors of ``count`` entries (in float32), never all in memory: made,
    counted and searched in slices of ``chunk`` entries (a float32 chunk in one reused buffer, in cache)."""

    def __init__(self, model: torch.Tensor, base: torch.Tensor, chunk: int):
        self.model, self.base, self.chunk, self.count = model, base, chunk, base.numel()
        float32 = model.dtype == base.dtype == torch.float32
        self.scratch = base.new_empty(min(chunk, self.count)) if float32 else None
        self.equal_counts: tuple[float, numpy.ndarray] | None = None  # the last count's value, equals per chunk

    def values(self, where: slice) -> torch.Tensor:
        """|model - base| on a slice, computed in float32; a chunk's in the reused buffer (valid until the next
        call) when both are float32."""
        size = len(range(*where.indices(self.count)))
        if self.scratch is None or size > self.scratch.numel():
            return selection_magnitudes(self.model[where].float() - self.base[where].float())
        return torch.sub(self.model[where], self.base[where], out=self.scratch[:size]).abs_()

    def count_below_equal(self, value: float) -> tuple[int, int]:
        """How many magnitudes are below and equal to ``value`` (keeps the equal ones' count per chunk)."""
        below, equals = 0, []
        for start in range(0, self.count, self.chunk):
            chunk_below, chunk_equal = count_below_equal(self.values(slice(start, start + self.chunk)), value)
            below += chunk_below
            equals.append(chunk_equal)
        self.equal_counts = (value, numpy.array(equals, dtype=numpy.int64))
        return below, sum(equals)

    def equal_position(self, value: float, n: int) -> int:
        """Flat position of the n-th (1-based) magnitude equal to ``value`` (there are at least n)."""
        if self.equal_counts is None or self.equal_counts[0] != value:
            self.count_below_equal(value)
        totals = numpy.cumsum(self.equal_counts[1])
        chunk = int(numpy.searchsorted(totals, n))  # the first chunk holding n of them
        if chunk == totals.size:
            raise RuntimeError(f"fewer than {n} magnitudes equal {value}")
        start, before = chunk * self.chunk, int(totals[chunk - 1]) if chunk else 0
        return start + int(true_positions(self.values(slice(start, start + self.chunk)) == value)[n - before - 1])


def top_cut_streamed(magnitudes: DeltaMagnitudes, keep: int) -> TopCut | None:
    """``top_cut`` of magnitudes never all in memory; None if undecided.

    Decides when a strided sample repeats its candidate for the cut, as task vectors of 16-bit weights do (few
    distinct values, one of them often a fifth of the tensor): one pass counts the values below and equal to
    it, which proves it the keep-th largest or not. None (the caller then uses ``top_cut`` on the whole
    tensor) for small tensors, an unrepeated candidate, or a wrong one.
    """
    count = magnitudes.count
    if keep >= count:
        return TopCut(-math.inf, count)
    if count <= 4 * SELECTION_SAMPLE:
        return None
    k = count - keep + 1
    candidate = repeated_candidate(magnitudes.values(slice(None, None, count // SELECTION_SAMPLE)), k, count)
    if candidate is None:
        return None
    below, equal = magnitudes.count_below_equal(candidate)
    if not below < k <= below + equal:
        return None
    needed = keep - (count - below - equal)  # entries equal to the cut to keep, the first ones
    if needed >= equal:
        return TopCut(candidate, count)
    return TopCut(candidate, magnitudes.equal_position(candidate, needed) + 1)


EXACT_FLOAT_COUNT = 1 << 24  # a float32 sum of ones is exact up to here


def count_below_equal(values: torch.Tensor, value: float) -> tuple[int, int]:
    """How many entries of ``values`` are below and equal to ``value``.

    Up to 2^24 entries the comparisons are written as float32 ones and zeros and summed, exactly: on CPU
    that is about 4x faster than counting a bool mask.
    """
    if values.numel() > EXACT_FLOAT_COUNT or not values.is_floating_point():
        return int(torch.count_nonzero(values < value)), int(torch.count_nonzero(values == value))
    flags = torch.empty(values.shape, dtype=torch.float32, device=values.device)
    return int(torch.lt(values, value, out=flags).sum()), int(torch.eq(values, value, out=flags).sum())


def true_positions(mask: torch.Tensor) -> torch.Tensor:
    """Flat positions of the True entries of a boolean mask, ascending (``torch.nonzero(mask).flatten()``);
    on CPU through numpy's flatnonzero, about 6x faster than torch's nonzero there."""
    if mask.device.type != "cpu":
        return torch.nonzero(mask.reshape(-1)).flatten()
    return torch.from_numpy(numpy.flatnonzero(mask.reshape(-1).numpy()))


def nth_true_position(mask: torch.Tensor, n: int) -> int:
    """Flat position of the n-th (1-based) True of a flat boolean mask: counted per block, then searched in one."""
    block = 1 << 16
    whole = mask.numel() // block * block
    totals = mask[:whole].view(-1, block).sum(dim=1).cumsum(0)
    index = int(torch.searchsorted(totals, n))
    before = int(totals[index - 1]) if index else 0
    rest = mask[index * block:(index + 1) * block] if index < totals.numel() else mask[whole:]
    return index * block + int(true_positions(rest)[n - before - 1])


def magnitude_keep(count: int, density: float) -> int:
    """How many entries ``magnitude`` keeps of ``count`` at ``density`` (in (0, 1)): at least one."""
    return max(1, int(density * count))


def magnitude(tensor: torch.Tensor, density: float, rescale: str | None = None) -> torch.Tensor:
    """Keep the ``density`` fraction of largest-magnitude entries (at least one when density > 0).

    Equal magnitudes at the cut are kept in index order (mergekit's unstable argsort keeps an
    unspecified subset of them); otherwise the kept set is mergekit's.
    """
    if density >= 1:
        return tensor
    if density <= 0 or tensor.numel() == 0:
        return torch.zeros_like(tensor)
    magnitudes = selection_magnitudes(tensor)
    mask = top_cut(magnitudes, magnitude_keep(tensor.numel(), density)).mask(magnitudes).to(tensor.dtype)
    return rescaled_masked_tensor(tensor, mask.reshape_as(tensor), rescale, density)


def magnitude_outliers(tensor: torch.Tensor, density: float, gamma: float = 0.01,
                       rescale: str | None = None) -> torch.Tensor:
    """Model Breadcrumbs: drop the ``gamma`` fraction of largest entries, then the smallest, keeping ``density``."""
    if density >= 1:
        return tensor
    count = tensor.numel()
    keep = int(density * count)
    top = int(gamma * count)
    bottom = max(0, count - keep - top)  # fewer outliers removed when density + gamma > 1
    mask = rank_window(selection_magnitudes(tensor), bottom, bottom + keep).to(tensor.dtype)
    return rescaled_masked_tensor(tensor, mask.reshape_as(tensor), rescale, density)


def _work_dtype(tensor: torch.Tensor) -> torch.dtype:
    """Bernoulli sampling dtype: float32 on CPU (no half-precision kernel) except bfloat16, as mergekit."""
    if tensor.device.type != "cpu" or tensor.dtype == torch.bfloat16:
        return tensor.dtype
    return torch.float32


def bernoulli(tensor: torch.Tensor, density: float, generator: torch.Generator | None = None,
              rescale: str | None = None) -> torch.Tensor:
    """DARE: keep each entry independently with probability ``density``, then rescale."""
    if density >= 1:
        return tensor
    work_dtype = _work_dtype(tensor)
    mask = torch.bernoulli(torch.full_like(tensor, density, dtype=work_dtype), generator=generator)
    return rescaled_masked_tensor(tensor.to(work_dtype), mask, rescale, density).to(tensor.dtype)


def della_magprune(tensor: torch.Tensor, density: float, epsilon: float, generator: torch.Generator | None = None,
                   rescale: str | None = None) -> torch.Tensor:
    """DELLA: per row, keep probability rising linearly with magnitude rank in [density - eps, density + eps]."""
    if density >= 1:
        return tensor
    if density <= 0:
        return torch.zeros_like(tensor)
    if density + epsilon >= 1 or density - epsilon <= 0:
        raise CMAAMError(f"della: epsilon={epsilon} must keep density +/- epsilon inside (0, 1) (density={density})")
    shape = tensor.shape
    work_dtype = _work_dtype(tensor)
    if tensor.dim() < 2:
        tensor = tensor.unsqueeze(0)
    ranks = torch.argsort(tensor.abs(), dim=1, descending=False).argsort(dim=1).to(work_dtype) + 1
    lowest = ranks.min(dim=1, keepdim=True).values
    highest = ranks.max(dim=1, keepdim=True).values
    rank_norm = ((ranks - lowest) / (highest - lowest)).clamp(0, 1)
    probabilities = (density - epsilon) + rank_norm * 2 * epsilon
    mask = torch.bernoulli(probabilities, generator=generator).to(work_dtype)
    return rescaled_masked_tensor(tensor.to(work_dtype), mask, rescale, density).to(tensor.dtype).reshape(shape)


def sparsify(tensor: torch.Tensor, density: float, method: str, gamma: float = 0.0, epsilon: float = 0.0,
             rescale: str | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Dispatch to one sparsification ``method`` (one of ``SPARSIFICATIONS``)."""
    if method == "magnitude":
        return magnitude(tensor, density, rescale)
    if method == "random":
        return bernoulli(tensor, density, generator, rescale)
    if method == "magnitude_outliers":
        return magnitude_outliers(tensor, density, gamma, rescale)
    if method == "della_magprune":
        return della_magprune(tensor, density, epsilon, generator, rescale)
    raise CMAAMError(f"unknown sparsification {method!r} (one of {', '.join(SPARSIFICATIONS)})")
