"""Checks shared by the merge methods: matching shapes and per-model parameter lists."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from cmaam.core.errors import CMAAMError


def check_shapes(method: str, tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None) -> None:
    """Raise CMAAMError unless every input (base included) has one shape.

    mergekit would truncate a differing vocabulary axis only on request and with a warning;
    we refuse instead (align tokenizers first, e.g. ``tokenizer_source: base``).
    """
    shapes = ([tuple(base.shape)] if base is not None else []) + [tuple(t.shape) for t in tensors]
    if len(set(shapes)) > 1:
        hint = " (different vocabulary sizes? align the tokenizers first)" if len({len(s) for s in shapes}) == 1 else ""
        raise CMAAMError(f"{method}: inputs have different shapes {shapes}{hint}")


def per_model(method: str, name: str, value: Any, count: int) -> list:
    """A per-model parameter as a list of ``count`` values (a scalar applies to every model)."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise CMAAMError(f"{method}: parameter {name} has {len(value)} values for {count} model(s)")
        return list(value)
    return [value] * count


def require_count(method: str, tensors: Sequence[torch.Tensor], minimum: int, maximum: int | None = None) -> None:
    """Raise CMAAMError unless the number of (non-base) inputs is within [minimum, maximum]."""
    count = len(tensors)
    if count < minimum or (maximum is not None and count > maximum):
        wanted = f"exactly {minimum}" if minimum == maximum else (
            f"at least {minimum}" if maximum is None else f"{minimum} to {maximum}")
        raise CMAAMError(f"{method}: needs {wanted} model(s) besides the base, got {count}")
