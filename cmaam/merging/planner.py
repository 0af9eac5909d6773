"""Plan a mergekit config into per-tensor jobs for cmaam.merging.executor: which inputs, which parameters, which names.

Semantics follow mergekit's planner (plan.py): ``models:`` is one slice spanning every layer, with the
base model appended when not listed; a gradient list is evaluated at t = layer / (layers - 1) within
its slice (t = 1 for a one-layer slice, t = 0 for tensors outside the layer stack); per-model
parameters resolve source > slice > global, shared ones slice > global; filters match substrings
of the tensor name (the input's name for per-model parameters).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from cmaam.io import CheckpointReader, parse_dtype
from cmaam.merging.executor import TensorJob
from cmaam.core.errors import CMAAMError
from cmaam.merging.mergekit_config import InputSlice, MergekitConfig, OutputSlice, resolve_setting
from cmaam.merging.methods import MergeMethod, get_method

LAYER_PATTERN = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|h|blocks|layer))\.(?P<index>\d+)\.(?P<rest>.+)$")
PRE_LAYER_MARKERS = ("embed", "wte", "wpe")  # non-layer tensors planned from the first slice's models
# YAML names that differ from registry names (``lambda`` is a Python keyword).
PARAMETER_ALIASES = {"lambda": "lambda_"}
PER_LAYER_CONFIG_KEYS = ("layer_types",)


@dataclass
class LayerStack:
    """The repeated decoder layers of a model: ``{prefix}.{index}.{rest}`` for index in range(count)."""

    prefix: str
    count: int
    rests: dict[int, list[str]] = field(default_factory=dict)

    def name(self, index: int, rest: str) -> str:
        return f"{self.prefix}.{index}.{rest}"


@dataclass
class MergePlan:
    """Everything run_merge needs: jobs, the output config, the model whose tokenizer files are copied."""

    jobs: list[TensorJob]
    config: dict
    reference: str
    dtype: torch.dtype | None


def num_hidden_layers(config: Mapping) -> int | None:
    """``num_hidden_layers`` of a config (top level, else its text_config)."""
    if isinstance(config.get("num_hidden_layers"), int):
        return config["num_hidden_layers"]
    text = config.get("text_config")
    if isinstance(text, Mapping) and isinstance(text.get("num_hidden_layers"), int):
        return text["num_hidden_layers"]
    return None


def layer_stacks(names: list[str]) -> dict[str, LayerStack]:
    """Group tensor names ``<prefix>.<index>.<rest>`` by prefix (decoder layers, vision blocks, ...)."""
    stacks: dict[str, LayerStack] = {}
    for name in names:
        match = LAYER_PATTERN.match(name)
        if match:
            stack = stacks.setdefault(match["prefix"], LayerStack(match["prefix"], 0))
            stack.rests.setdefault(int(match["index"]), []).append(match["rest"])
    for stack in stacks.values():
        stack.count = max(stack.rests) + 1
    return stacks


def main_stack(reader: CheckpointReader) -> LayerStack:
    """The decoder layer stack: the one whose length is the config's num_hidden_layers."""
    stacks = layer_stacks(reader.keys())
    expected = num_hidden_layers(reader.config)
    candidates = [s for s in stacks.values() if expected is None or s.count == expected]
    candidates.sort(key=lambda s: ("layers" not in s.prefix, -s.count))
    if not candidates:
        raise CMAAMError(f"{reader.path}: cannot find its {expected} decoder layers among the tensor names")
    return candidates[0]


def tensor_seed(seed: int, name: str) -> int:
    """A per-tensor seed from the run seed and the output name, so results do not depend on order."""
    digest = hashlib.sha256(f"{seed}:{name}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def merge_tensors(tensors: list[torch.Tensor], method: MergeMethod, base_index: int | None,
                  parameters: dict[str, Any], cast: torch.dtype | None) -> torch.Tensor:
    """Apply ``method`` to loaded inputs (inputs rounded to the config's ``dtype`` first, as mergekit loads them)."""
    if cast is not None:
        tensors = [tensor.to(cast).float() for tensor in tensors]
    base = tensors[base_index] if base_index is not None else None
    others = [tensor for index, tensor in enumerate(tensors) if index != base_index]
    return method(others, base, **parameters)


class Planner:
    """Turns a MergekitConfig plus opened readers into TensorJobs (one per output tensor)."""

    def __init__(self, config: MergekitConfig, readers: Mapping[str, CheckpointReader], seed: int = 0,
                 dtype: str | torch.dtype | None = None):
        self.config = config
        self.readers = readers
        self.seed = seed
        self.method = get_method(config.merge_method)
        self.names = self._parameter_names()
        self.cast = parse_dtype(config.dtype)
        self.dtype = parse_dtype(dtype) or parse_dtype(config.out_dtype) or self.cast
        self.jobs: list[TensorJob] = []
        self._stacks: dict[str, LayerStack] = {}

    # -- validation ------------------------------------------------------------------------
    def _parameter_names(self) -> dict[str, str]:
        """YAML parameter name -> registry name; unknown names are an error, not silently ignored."""
        known = {p.name for p in self.method.parameters}
        mapping = {}
        for name in sorted(self.config.parameter_names()):
            target = PARAMETER_ALIASES.get(name, name)
            if target == "seed":
                raise CMAAMError(f"{self.method.name}: set the random seed with --seed, not in the YAML")
            if target not in known:
                listed = ", ".join(sorted(PARAMETER_ALIASES.get(k, k) for k in known) or ["none"])
                raise CMAAMError(f"{self.method.name}: unknown parameter {name!r} (known: {listed})")
            mapping[target] = name
        return mapping

    def _slices(self) -> list[OutputSlice]:
        """``models:`` -> one slice over all layers (base appended when missing), as mergekit normalises."""
        if self.config.slices:
            return self.config.slices
        sources = [InputSlice(m.model, (0, self._stack(m.model).count), m.parameters) for m in self.config.models]
        base = self.config.base_model
        if base and base not in [s.model for s in sources]:
            sources.append(InputSlice(base, (0, self._stack(base).count), {}))
        return [OutputSlice(sources)]

    def _stack(self, model: str) -> LayerStack:
        if model not in self._stacks:
            self._stacks[model] = main_stack(self.readers[model])
        return self._stacks[model]

    def _base_of(self, output_slice: OutputSlice, where: str) -> str | None:
        base = output_slice.base_model or self.config.base_model
        models = [s.model for s in output_slice.sources]
        if self.method.requires_base:
            if base is None:
                raise CMAAMError(f"{self.method.name} needs a base_model")
            if base not in models:
                raise CMAAMError(f"{where}: base model {base} is not among the slice's sources")
        return base if base in models else None

    # -- planning --------------------------------------------------------------------------
    def plan(self) -> MergePlan:
        slices = self._slices()
        reference = self.config.base_model or slices[0].sources[0].model
        output_stack = self._stack(reference)
        reference_names = self.readers[reference].keys()
        layered = {output_stack.name(i, r) for i, rests in output_stack.rests.items() for r in rests}
        outside = [n for n in reference_names if n not in layered]
        pre = [n for n in outside if any(marker in n for marker in PRE_LAYER_MARKERS)]
        post = [n for n in outside if n not in pre]
        where = [f"slices[{number}]" if self.config.slices else "models" for number in range(len(slices))]
        for name in pre:
            self._add(name, slices[0], lambda model, n=name: n, t=0.0, where=where[0])
        layer_types: list = []
        output_layer = 0
        for number, output_slice in enumerate(slices):
            models = [s.model for s in output_slice.sources]
            if len(set(models)) < len(models):
                raise CMAAMError(f"{where[number]}: a model appears twice among the inputs of one slice")
            lengths = {s.layer_range[1] - s.layer_range[0] for s in output_slice.sources}
            if len(lengths) > 1:
                raise CMAAMError(f"{where[number]}: the models have different numbers of layers ({sorted(lengths)})")
            length = lengths.pop()
            for source in output_slice.sources:
                available = self._stack(source.model).count
                if source.layer_range[1] > available:
                    raise CMAAMError(f"{where[number]}: layer_range {list(source.layer_range)} exceeds the {available} "
                                     f"layers of {source.model}")
            for offset in range(length):
                t = offset / (length - 1) if length > 1 else 1.0
                first = output_slice.sources[0]
                source_stack = self._stack(first.model)
                for rest in source_stack.rests.get(first.layer_range[0] + offset, []):
                    def input_name(model: str, rest=rest, offset=offset, sources=output_slice.sources) -> str:
                        start = next(s.layer_range[0] for s in sources if s.model == model)
                        return self._stack(model).name(start + offset, rest)
                    self._add(output_stack.name(output_layer, rest), output_slice, input_name, t, where[number])
                types = self.readers[first.model].config.get("layer_types")
                if isinstance(types, list) and first.layer_range[0] + offset < len(types):
                    layer_types.append(types[first.layer_range[0] + offset])
                output_layer += 1
        for name in post:
            self._add(name, slices[-1], lambda model, n=name: n, t=0.0, where=where[-1])
        return MergePlan(self.jobs, self._output_config(reference, output_layer, layer_types), reference, self.dtype)

    def _add(self, output_name: str, output_slice: OutputSlice, input_name, t: float, where: str) -> None:
        """Plan one output tensor: its inputs (base first when the method needs one) and parameters."""
        base = self._base_of(output_slice, where)
        sources = list(output_slice.sources)
        if base is not None and self.method.takes_base:
            sources.sort(key=lambda s: s.model != base)
        names = [input_name(s.model) for s in sources]  # filters match these (before tied-weight fallback)
        inputs = [(s.model, self._resolve_name(s.model, name)) for s, name in zip(sources, names)]
        contributors = [(s, name) for s, name in zip(sources, names)
                        if not (self.method.takes_base and s.model == base)]
        parameters: dict[str, Any] = {}
        for parameter in self.method.parameters:
            yaml_name = self.names.get(parameter.name)
            if parameter.name == "seed":
                parameters["seed"] = tensor_seed(self.seed, output_name)
            elif parameter.per_model:
                values = [resolve_setting(yaml_name, (s.parameters, output_slice.parameters, self.config.parameters),
                                          name, t) if yaml_name else None for s, name in contributors]
                for (s, name), value in zip(contributors, values):
                    if value is None and parameter.required:
                        raise CMAAMError(f"{self.method.name}: missing parameter {parameter.name!r} for model "
                                         f"{s.model} (tensor {name})")
                if any(v is not None for v in values):
                    parameters[parameter.name] = [parameter.default if v is None else v for v in values]
            elif yaml_name:
                value = resolve_setting(yaml_name, (output_slice.parameters, self.config.parameters), output_name, t)
                if value is not None:
                    parameters[parameter.name] = value
            if parameter.required and parameter.name not in parameters:
                raise CMAAMError(f"{self.method.name}: missing parameter {parameter.name!r} for {output_name}")
        self.method.validate(parameters)
        plain_copy = self.method.name == "passthrough" and "scale" not in parameters and self.cast is None
        merge = None if plain_copy else functools.partial(
            merge_tensors, method=self.method, base_index=0 if (base is not None and self.method.takes_base)
            else None, parameters=parameters, cast=self.cast)
        self.jobs.append(TensorJob(output_name, inputs, merge, row_local=merge is None or self.method.row_local,
                                   propagates_nonfinite=merge is not None and self.method.propagates_nonfinite,
                                   takes_stored=merge is not None and self.method.takes_stored))

    def _resolve_name(self, model: str, name: str) -> str:
        """The input's tensor name; a missing lm_head of a tied-embedding model reads the embedding (as mergekit)."""
        reader = self.readers[model]
        if name in reader or not name.endswith("lm_head.weight") or not reader.config.get("tie_word_embeddings", True):
            return name
        embedding = [n for n in reader.keys() if n.endswith("embed_tokens.weight")]
        return embedding[0] if len(embedding) == 1 else name

    def _output_config(self, reference: str, layers: int, layer_types: list) -> dict:
        """The reference model's config with num_hidden_layers (and per-layer lists) set for slices."""
        config = copy.deepcopy(self.readers[reference].config)
        if self.config.slices:
            target = config if "num_hidden_layers" in config else config.get("text_config", config)
            old = target.get("num_hidden_layers")
            target["num_hidden_layers"] = layers
            for key in PER_LAYER_CONFIG_KEYS:
                if isinstance(target.get(key), list) and len(target[key]) == old and len(layer_types) == layers:
                    target[key] = layer_types
        return config


def plan_merge(config: MergekitConfig, readers: Mapping[str, CheckpointReader], seed: int = 0,
               dtype: str | torch.dtype | None = None) -> MergePlan:
    """Plan ``config`` over opened ``readers`` (keyed by the model strings of the YAML)."""
    return Planner(config, readers, seed=seed, dtype=dtype).plan()
