"""Registry of merge methods: each one a pure function of tensors and parameters, looked up by name."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from cmaam.core.errors import CMAAMError


@dataclass(frozen=True)
class Parameter:
    """One parameter of a merge method: per model (weight, density) or global (t, normalize)."""

    name: str
    default: Any = None
    per_model: bool = False
    minimum: float | None = None
    maximum: float | None = None
    required: bool = False

    def check(self, value: Any, method: str) -> None:
        """Raise CMAAMError if ``value`` is outside the documented range."""
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, (list, tuple)):
            for item in value:
                self.check(item, method)
            return
        number = float(value)
        if not math.isfinite(number):
            raise CMAAMError(f"{method}: parameter {self.name}={value} is not a finite number")
        if self.minimum is not None and number < self.minimum:
            raise CMAAMError(f"{method}: parameter {self.name}={value} is below {self.minimum}")
        if self.maximum is not None and number > self.maximum:
            raise CMAAMError(f"{method}: parameter {self.name}={value} is above {self.maximum}")


@dataclass(frozen=True)
class MergeMethod:
    """A registered method: ``function(tensors, base, **parameters) -> tensor``.

    ``tensors`` are the contributing models' tensors (the base excluded when the method takes one);
    per-model parameters arrive as lists aligned with ``tensors``, global ones as scalars.
    ``row_local``: elementwise, so applying it to row blocks gives exactly the rows of the whole result
    (large tensors are then merged in row blocks within the memory budget).
    ``optional_base``: the base, when the config names one, is the origin (mergekit's BasePolicy.OPTIONAL,
    e.g. nuslerp); without one the method works on the models themselves.
    ``propagates_nonfinite``: plain IEEE arithmetic on each element (weighted sums): a NaN or Inf in any input
    gives a NaN or Inf at that place of the output, so checking the output also checks the inputs.
    ``takes_stored``: the function takes inputs in any floating dtype (as stored) and computes in float32
    itself, so the executor hands them on unconverted (TIES' fused kernels read bfloat16 directly).
    """

    name: str
    function: Callable[..., torch.Tensor]
    parameters: tuple[Parameter, ...] = ()
    requires_base: bool = False
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    row_local: bool = False
    optional_base: bool = False
    propagates_nonfinite: bool = False
    takes_stored: bool = False

    @property
    def takes_base(self) -> bool:
        """Whether a base model, when given, is passed apart from the contributing models."""
        return self.requires_base or self.optional_base

    def parameter(self, name: str) -> Parameter:
        for parameter in self.parameters:
            if parameter.name == name:
                return parameter
        known = ", ".join(p.name for p in self.parameters) or "none"
        raise CMAAMError(f"{self.name}: unknown parameter {name!r} (known: {known})")

    def validate(self, values: Mapping[str, Any]) -> None:
        """Check names and ranges of parameter values (scalars or per-model lists)."""
        for name, value in values.items():
            self.parameter(name).check(value, self.name)

    def __call__(self, tensors: Sequence[torch.Tensor], base: torch.Tensor | None = None, **parameters) -> torch.Tensor:
        if self.requires_base and base is None:
            raise CMAAMError(f"{self.name}: a base model is required")
        values = {p.name: p.default for p in self.parameters if p.default is not None}
        values.update(parameters)
        missing = [p.name for p in self.parameters if p.required and values.get(p.name) is None]
        if missing:
            raise CMAAMError(f"{self.name}: missing parameter(s) {', '.join(missing)}")
        return self.function(list(tensors), base, **values)


METHODS: dict[str, MergeMethod] = {}


def register(name: str, parameters: Sequence[Parameter] = (), requires_base: bool = False,
             aliases: Sequence[str] = (), row_local: bool = False, optional_base: bool = False,
             propagates_nonfinite: bool = False, takes_stored: bool = False
             ) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator: register a pure tensor function as merge method ``name`` (the flags as in MergeMethod)."""

    def decorate(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        doc = (function.__doc__ or "").strip().splitlines()
        method = MergeMethod(name, function, tuple(parameters), requires_base, doc[0] if doc else "", tuple(aliases),
                             row_local, optional_base, propagates_nonfinite, takes_stored)
        for key in (name, *aliases):
            METHODS[key] = method
        return function

    return decorate


def get_method(name: str) -> MergeMethod:
    """Look a method up by name (one-line error listing the known names)."""
    from cmaam.merging import methods  # noqa: F401  (registers the built-in methods)

    if name not in METHODS:
        raise CMAAMError(f"unknown merge method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[name]


def list_methods() -> list[MergeMethod]:
    """All registered methods, each once, sorted by name."""
    from cmaam.merging import methods  # noqa: F401

    unique = {method.name: method for method in METHODS.values()}
    return [unique[name] for name in sorted(unique)]
