"""mergekit YAML configs as dataclasses: parsing, validation and parameter resolution (mergekit's semantics)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from cmaam.core.errors import CMAAMError

# A parameter setting as written in YAML: a scalar, a gradient list of scalars, or conditional
# entries ({filter, value} or a list of them), exactly mergekit's ``ParameterSetting``.
ParameterSetting = Any
Parameters = dict[str, ParameterSetting]

TOP_LEVEL_KEYS = ("merge_method", "models", "slices", "base_model", "parameters", "dtype", "out_dtype",
                  "tokenizer_source")
# mergekit keys cmaam recognises but does not implement: a clear error instead of a silent difference.
UNSUPPORTED_KEYS = {
    "modules": "per-module configs (modules:) are not supported; use models: or slices:",
    "tokenizer": "the tokenizer: block (vocabulary surgery) is not supported; use tokenizer_source: base",
    "chat_template": "chat_template: is not supported; the base model's chat template is copied",
}
SCALAR_TYPES = (bool, int, float, str)


@dataclass
class InputModel:
    """One entry of ``models:``: a model folder and its own parameters."""

    model: str
    parameters: Parameters = field(default_factory=dict)


@dataclass
class InputSlice:
    """One source of an output slice: layers ``layer_range[0]:layer_range[1]`` of ``model``."""

    model: str
    layer_range: tuple[int, int]
    parameters: Parameters = field(default_factory=dict)


@dataclass
class OutputSlice:
    """One entry of ``slices:``: sources with equal layer counts, merged layer by layer."""

    sources: list[InputSlice]
    base_model: str | None = None
    parameters: Parameters = field(default_factory=dict)


@dataclass
class MergekitConfig:
    """A parsed mergekit config; exactly one of ``models`` and ``slices`` is set."""

    merge_method: str
    models: list[InputModel] | None = None
    slices: list[OutputSlice] | None = None
    base_model: str | None = None
    parameters: Parameters = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    text: str = ""  # the YAML as given (saved beside the merged model)

    def referenced_models(self) -> list[str]:
        """Every model path used, in first-mention order (base first)."""
        names = [self.base_model] if self.base_model else []
        for entry in self.models or []:
            names.append(entry.model)
        for output_slice in self.slices or []:
            names.extend(source.model for source in output_slice.sources)
            if output_slice.base_model:
                names.append(output_slice.base_model)
        return list(dict.fromkeys(names))

    def parameter_names(self) -> set[str]:
        """Names of all parameters set anywhere in the config."""
        scopes = [self.parameters] + [entry.parameters for entry in self.models or []]
        for output_slice in self.slices or []:
            scopes.append(output_slice.parameters)
            scopes.extend(source.parameters for source in output_slice.sources)
        return {name for scope in scopes for name in scope}


def _check_keys(data: Mapping, allowed: Iterable[str], where: str) -> None:
    allowed = tuple(allowed)
    for key in data:
        if key in UNSUPPORTED_KEYS and where == "config":
            raise CMAAMError(UNSUPPORTED_KEYS[key])
        if key not in allowed:
            raise CMAAMError(f"{where}: unknown key {key!r} (allowed: {', '.join(allowed)})")


def _model_reference(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise CMAAMError(f"{where}: 'model' must be a path to a model folder, got {value!r}")
    return value


def _check_setting(name: str, setting: Any, where: str) -> None:
    """Reject parameter values that are neither scalars, gradients nor {filter, value} entries."""
    if isinstance(setting, SCALAR_TYPES):
        return
    entries = [setting] if isinstance(setting, dict) else setting
    if not isinstance(entries, list) or not entries:
        raise CMAAMError(f"{where}: parameter {name!r} has an unsupported value {setting!r}")
    if all(isinstance(entry, SCALAR_TYPES) for entry in entries):
        return
    for entry in entries:
        if not isinstance(entry, dict) or "value" not in entry or set(entry) - {"value", "filter"}:
            raise CMAAMError(f"{where}: parameter {name!r}: conditional entries need 'value' and an optional "
                             f"'filter', got {entry!r}")
        if entry.get("filter") is not None and not isinstance(entry["filter"], str):
            raise CMAAMError(f"{where}: parameter {name!r}: filter must be a string, got {entry['filter']!r}")
        value = entry["value"]
        if not (isinstance(value, SCALAR_TYPES) or (isinstance(value, list) and value
                                                   and all(isinstance(v, SCALAR_TYPES) for v in value))):
            raise CMAAMError(f"{where}: parameter {name!r}: value must be a scalar or a list, got {value!r}")


def _parameters(data: Any, where: str) -> Parameters:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CMAAMError(f"{where}: 'parameters' must be a mapping, got {type(data).__name__}")
    for name, setting in data.items():
        _check_setting(str(name), setting, where)
    return {str(name): setting for name, setting in data.items()}


def _mapping(data: Any, where: str) -> dict:
    if not isinstance(data, dict):
        raise CMAAMError(f"{where}: expected a mapping, got {data!r}")
    return data


def _layer_range(value: Any, where: str) -> tuple[int, int]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise CMAAMError(f"{where}: layer_range must be two integers [start, end], got {value!r}")
    start, end = value
    if start < 0 or end <= start:
        raise CMAAMError(f"{where}: layer_range {list(value)} must satisfy 0 <= start < end")
    return int(start), int(end)


def _entries(items: Any, key: str, allowed: tuple[str, ...]) -> list[tuple[str, dict]]:
    """(``key[i]``, mapping) for each entry of a YAML list whose entries may only use ``allowed`` keys."""
    if not isinstance(items, list) or not items:
        raise CMAAMError(f"config: '{key}' must be a non-empty list")
    entries = []
    for index, entry in enumerate(items):
        where = f"{key}[{index}]"
        entry = _mapping(entry, where)
        if "residual_weight" in entry:
            raise CMAAMError(f"{where}: residual_weight is not supported")
        _check_keys(entry, allowed, where)
        entries.append((where, entry))
    return entries


def _output_slice(entry: dict, where: str) -> OutputSlice:
    sources = [InputSlice(_model_reference(source.get("model"), inner), _layer_range(source.get("layer_range"), inner),
                          _parameters(source.get("parameters"), inner))
               for inner, source in _entries(entry.get("sources"), f"{where}.sources",
                                             ("model", "layer_range", "parameters"))]
    if len({s.layer_range[1] - s.layer_range[0] for s in sources}) > 1:
        raise CMAAMError(f"{where}: all sources of a slice must span the same number of layers")
    base = entry.get("base_model")
    return OutputSlice(sources, _model_reference(base, where) if base else None,
                       _parameters(entry.get("parameters"), where))


def parse_merge_config(data: Any, text: str = "") -> MergekitConfig:
    """Validate a loaded YAML document and return it as a ``MergekitConfig``."""
    data = _mapping(data, "config")
    _check_keys(data, TOP_LEVEL_KEYS, "config")
    if not isinstance(data.get("merge_method"), str):
        raise CMAAMError("config: 'merge_method' is required (e.g. merge_method: linear)")
    if bool(data.get("models")) == bool(data.get("slices")):
        raise CMAAMError("config: exactly one of 'models' or 'slices' must be given")
    models = None
    if data.get("models"):
        models = [InputModel(_model_reference(entry.get("model"), where), _parameters(entry.get("parameters"), where))
                  for where, entry in _entries(data["models"], "models", ("model", "parameters"))]
    slices = None
    if data.get("slices"):
        slices = [_output_slice(entry, where)
                  for where, entry in _entries(data["slices"], "slices", ("sources", "base_model", "parameters"))]
    base_model = data.get("base_model")
    if base_model is not None:
        base_model = _model_reference(base_model, "base_model")
    tokenizer_source = data.get("tokenizer_source")
    if tokenizer_source is not None and tokenizer_source != "base":
        raise CMAAMError(f"tokenizer_source: {tokenizer_source!r} is not supported (only 'base': vocabularies are "
                         "not remapped; merge models that share a tokenizer)")
    if tokenizer_source == "base" and not base_model:
        raise CMAAMError("tokenizer_source: base needs a base_model")
    for key in ("dtype", "out_dtype"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise CMAAMError(f"config: {key} must be a dtype name such as bfloat16, got {data[key]!r}")
    return MergekitConfig(
        merge_method=data["merge_method"], models=models, slices=slices, base_model=base_model,
        parameters=_parameters(data.get("parameters"), "config"), dtype=data.get("dtype"),
        out_dtype=data.get("out_dtype"), tokenizer_source=tokenizer_source, text=text,
    )


def load_merge_config(path: str | Path) -> MergekitConfig:
    """Read and validate a mergekit YAML file."""
    path = Path(path)
    if not path.is_file():
        raise CMAAMError(f"{path}: no such config file")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise CMAAMError(f"{path}: invalid YAML{where}") from None
    return parse_merge_config(data, text)


# -- parameter resolution (mergekit.config.evaluate_setting / parameter_resolver) ---------------
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def evaluate_setting(tensor_name: str, setting: ParameterSetting, t: float = 0.0) -> Any:
    """Resolve filters and gradients: numeric gradient lists interpolate linearly at ``t`` in [0, 1],
    other lists pick ``values[int(t * (n - 1))]``; conditional entries match by substring of the name."""
    if isinstance(setting, dict):
        setting = [setting]
    if isinstance(setting, SCALAR_TYPES):
        return setting
    if not setting:
        return None
    if all(isinstance(entry, SCALAR_TYPES) for entry in setting):
        if not all(_is_number(entry) for entry in setting):
            return setting[int(t * (len(setting) - 1))]
        scaled = t * (len(setting) - 1)
        low = int(scaled)
        high = min(len(setting) - 1, low + 1)
        fraction = scaled - low
        return (1 - fraction) * float(setting[low]) + fraction * float(setting[high])
    for entry in setting:
        condition = entry.get("filter")
        if condition is None or condition == "*" or (tensor_name and condition in tensor_name):
            return evaluate_setting(tensor_name, entry["value"], t)
    return None


def resolve_setting(name: str, scopes: Iterable[Parameters | None], tensor_name: str, t: float) -> Any:
    """First non-None value of parameter ``name`` over ``scopes`` (highest precedence first)."""
    for scope in scopes:
        if scope and name in scope:
            value = evaluate_setting(tensor_name, scope[name], t)
            if value is not None:
                return value
    return None
