"""Genomes of the CMA-ES merger: which merge coefficient each gene sets, and how genes map to tensors.

A genome is a flat vector. Tensors are grouped into *units* (one per tensor, per layer, or per block
of layers; tensors outside the layers, such as embeddings, norm and lm_head, are units of their own),
and every unit carries the method's coefficients: ``t`` for slerp, or ``weight`` (and ``density``)
per contributing model for task_arithmetic, ties and dare_ties.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from cmaam.core.config import InvalidValue, from_dict, setting
from cmaam.core.errors import CMAAMError

METHOD_PARAMETERS = {
    "slerp": ("t",),
    "task_arithmetic": ("weight",),
    "ties": ("weight", "density"),
    "dare_ties": ("weight", "density"),
    "dare_linear": ("weight", "density"),
}
GRANULARITIES = ("tensor", "layer", "group")
DEFAULT_BOUNDS = {"t": (0.0, 1.0), "weight": (0.0, 1.0), "density": (0.05, 1.0)}
DEFAULT_INIT = {"t": 0.5, "weight": 0.5, "density": 0.5}
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class LayoutBase:
    """What every genome layout gives the search loop, from its ``labels``, ``bounds()``, ``check_genome`` and
    ``spec.sigma``: length, step size, clipping and the labelled table."""

    labels: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sigma(self) -> float:
        """CMA-ES's initial step size for this genome."""
        return float(self.spec.sigma)

    def clip(self, genome: Sequence[float]) -> list[float]:
        """Genome values clipped into their bounds (BoundPenalty candidates may step outside)."""
        lows, highs = self.bounds()
        return [min(max(float(v), low), high) for v, low, high in zip(genome, lows, highs)]

    def as_table(self, genome: Sequence[float]) -> dict[str, float]:
        """``{gene label: value}`` for reports and the final genome JSON."""
        self.check_genome(genome)
        return {label: float(v) for label, v in zip(self.labels, genome)}


def layer_index(name: str) -> int | None:
    """Decoder layer index of a parameter name (``model.layers.3.mlp...`` -> 3), None outside the layers."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


@dataclass
class GenomeSpec:
    """How a genome is laid out: merge method, granularity and the coefficients' init, step and bounds."""

    method: str = "slerp"
    granularity: str = "tensor"  # tensor | layer | group
    layers_per_group: int = 4  # for granularity "group"
    init: float | dict[str, float] | list[float] = 0.5  # one value, per-parameter values, or a full genome
    sigma: float = 0.1
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)
    normalize: bool | None = None  # task-vector methods: divide by the sum of weights; None = method default
    lambda_: float = setting(1.0, alias="lambda")  # ties / dare / task_arithmetic scaling of the merged task vector

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "GenomeSpec":
        """Build from a YAML mapping (``cmaam.core.config``), with one-line errors for unknown keys and bad values."""
        return from_dict(cls, values, "genome")

    def validate(self) -> None:
        """Raise InvalidValue on an unknown method or granularity, a bad sigma or bad bounds."""
        if self.method not in METHOD_PARAMETERS:
            raise InvalidValue("method", f"unknown method {self.method!r} (choose {', '.join(METHOD_PARAMETERS)})")
        if self.granularity not in GRANULARITIES:
            raise InvalidValue("granularity", f"unknown granularity {self.granularity!r} "
                                              f"(choose {', '.join(GRANULARITIES)})")
        if self.granularity == "group" and int(self.layers_per_group) < 1:
            raise InvalidValue("layers_per_group", "must be at least 1")
        if not float(self.sigma) > 0:
            raise InvalidValue("sigma", f"must be positive, got {self.sigma}")
        for name, (low, high) in self.bounds.items():
            if name not in DEFAULT_BOUNDS:
                raise InvalidValue("bounds", f"bounds for unknown parameter {name!r} (known: t, weight, density)")
            if not low < high:
                raise InvalidValue(f"bounds.{name}", f"must satisfy low < high, got [{low}, {high}]")

    @property
    def parameters(self) -> tuple[str, ...]:
        """The coefficients each unit carries (per contributing model, except slerp's t)."""
        return METHOD_PARAMETERS[self.method]

    def bound(self, parameter: str) -> tuple[float, float]:
        return tuple(self.bounds.get(parameter, DEFAULT_BOUNDS[parameter]))


@dataclass(frozen=True)
class Gene:
    """One coefficient: ``parameter`` of ``model`` (None for slerp's shared t) on the tensors of ``unit``."""

    unit: str
    parameter: str
    model: str | None = None

    @property
    def label(self) -> str:
        return f"{self.unit}:{self.parameter}" + (f"[{self.model}]" if self.model else "")


class GenomeLayout(LayoutBase):
    """The map between a flat genome and per-tensor merge parameters of one model architecture.

    ``tensor_names`` are the floating-point tensors to merge (in checkpoint order), ``models`` the
    contributing models (the base excluded). Raises CMAAMError where the method and models disagree.
    """

    def __init__(self, spec: GenomeSpec, tensor_names: Sequence[str], models: Sequence[str], base_model: str):
        try:
            spec.validate()
        except InvalidValue as error:
            raise CMAAMError(f"genome.{error}") from None
        if not tensor_names:
            raise CMAAMError("genome: the model has no floating-point tensors to merge")
        if spec.method == "slerp" and len(models) != 1:
            raise CMAAMError(f"slerp merges exactly two models (base + 1), got base + {len(models)}")
        if not models:
            raise CMAAMError(f"{spec.method} needs at least one model besides the base model")
        self.spec = spec
        self.tensor_names = list(tensor_names)
        self.models = list(models)
        self.base_model = base_model
        self.unit_of: dict[str, str] = {name: self._unit(name) for name in self.tensor_names}
        self.units: list[str] = list(dict.fromkeys(self.unit_of.values()))
        per_model = spec.method != "slerp"
        self.genes: list[Gene] = [
            Gene(unit, parameter, model)
            for unit in self.units
            for parameter in spec.parameters
            for model in (self.models if per_model else [None])
        ]
        self._unit_index = {unit: i for i, unit in enumerate(self.units)}
        self._genes_per_unit = len(self.genes) // len(self.units)

    def _unit(self, name: str) -> str:
        layer = layer_index(name)
        if layer is None or self.spec.granularity == "tensor":
            return name
        if self.spec.granularity == "layer":
            return f"layers.{layer}"
        size = int(self.spec.layers_per_group)
        first = layer // size * size
        return f"layers.{first}-{first + size - 1}"

    @property
    def labels(self) -> list[str]:
        return [gene.label for gene in self.genes]

    def bounds(self) -> tuple[list[float], list[float]]:
        """Lower and upper bound of every gene (for the ``bounds`` option of ``cma``)."""
        pairs = [self.spec.bound(gene.parameter) for gene in self.genes]
        return [low for low, _ in pairs], [high for _, high in pairs]

    def initial(self) -> list[float]:
        """The starting genome: ``spec.init`` as one value, per-parameter values, or a full list."""
        init = self.spec.init
        if isinstance(init, (list, tuple)):
            self.check_genome(init, "genome.init")
            values = [float(v) for v in init]
        elif isinstance(init, Mapping):
            unknown = sorted(set(init) - set(self.spec.parameters))
            if unknown:
                raise CMAAMError(f"genome.init: unknown parameter(s) {', '.join(unknown)} for {self.spec.method}")
            values = [float(init.get(g.parameter, DEFAULT_INIT[g.parameter])) for g in self.genes]
        else:
            values = [float(init)] * len(self.genes)
        lows, highs = self.bounds()
        for gene, value, low, high in zip(self.genes, values, lows, highs):
            if not low <= value <= high:
                raise CMAAMError(f"genome.init: {gene.label}={value} is outside its bounds [{low}, {high}]")
        return values

    def check_genome(self, genome: Sequence[float], where: str = "genome") -> None:
        """Raise CMAAMError unless ``genome`` has exactly one value per gene."""
        if len(genome) != len(self.genes):
            raise CMAAMError(
                f"{where} has {len(genome)} values but this model needs {len(self.genes)} "
                f"({len(self.units)} {self.spec.granularity} units x {self._genes_per_unit} "
                f"{self.spec.method} coefficients)"
            )

    def parameters_for(self, genome: Sequence[float], tensor_name: str) -> dict[str, Any]:
        """The merge method's keyword arguments for one tensor: ``{"t": x}`` or per-model lists.

        For the task-vector methods ``normalize`` and ``lambda_`` are included too; the merger passes
        on only those the registered method declares.
        """
        start = self._unit_index[self.unit_of[tensor_name]] * self._genes_per_unit
        values = [float(v) for v in genome[start:start + self._genes_per_unit]]
        if self.spec.method == "slerp":
            return {"t": values[0]}
        count = len(self.models)
        result: dict[str, Any] = {}
        for k, parameter in enumerate(self.spec.parameters):
            result[parameter] = values[k * count:(k + 1) * count]
        if self.spec.normalize is not None:
            result["normalize"] = bool(self.spec.normalize)
        result["lambda_"] = float(self.spec.lambda_)
        return result
