"""Typed configs from YAML: one generic dataclass loader, with ``--set KEY=VALUE`` overrides.

A config is a plain dataclass (nested dataclasses for its sections). ``load_config(ExperimentConfig, path,
overrides)`` reads the YAML, applies the overrides, and builds the dataclass, checking every key against the
fields and every value against its type hint; ``setting(check=...)`` adds a value check to a field, and a
``validate()`` method checks what involves several fields. Every mistake is one ``ConfigError`` line that
names the file and the key's path: ``demo.yaml: merge.base_alpha: must be in [0, 1], got 1.5``.

Why not pydantic: the configs stay plain dataclasses that the rest of the code already uses (``asdict``,
``replace``, pickled to Ray workers), the messages are ours, and no dependency is added. Types understood:
``bool``, ``int``, ``float`` (an int is accepted; so is a numeric string, as YAML 1.1 reads ``2e-3``), ``str``,
``None`` and unions (``X | None``: the first member that fits), ``Literal``, ``list[T]``, ``tuple[T, ...]``,
``tuple[A, B]``, ``dict[K, V]``, ``Any`` and nested dataclasses (a missing or null section takes its defaults).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, TypeVar

import yaml

from cmaam.core.errors import CMAAMError

T = TypeVar("T")
Check = Callable[[Any], "str | None"]  # returns what is wrong with a value, or None


class ConfigError(CMAAMError):
    """A bad config key or value: ``FILE: key.path: what is wrong``."""


class InvalidValue(ConfigError):
    """Raised by a config's ``validate()`` for one of its keys; the loader puts the section's path before it."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


# -- declaring fields ---------------------------------------------------------------------------------
def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
            check: Check | None = None, alias: str | None = None) -> Any:
    """A dataclass field with a value ``check`` and an optional YAML key ``alias`` (e.g. ``lambda``)."""
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata={"check": check, "alias": alias})


def between(low: float, high: float) -> Check:
    """The value lies in [low, high] (and is a finite number)."""
    def check(value: Any) -> str | None:
        ok = isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high
        return None if ok else f"must be in [{low:g}, {high:g}]"
    return check


def at_least(low: float) -> Check:
    """The value is at least ``low`` (None passes: it means "not set")."""
    def check(value: Any) -> str | None:
        return None if value is None or value >= low else f"must be at least {low:g}"
    return check


def each(check: Check) -> Check:
    """``check`` holds for every element of a list (the first failure is reported)."""
    def check_all(values: Any) -> str | None:
        for index, value in enumerate(values):
            problem = check(value)
            if problem:
                return f"[{index}] {problem}"
        return None
    return check_all


def one_of(choices: Sequence[Any]) -> Check:
    """The value is one of ``choices`` (each element, for a list)."""
    def check(value: Any) -> str | None:
        values = value if isinstance(value, (list, tuple)) else [value]
        bad = [item for item in values if item not in choices]
        return None if not bad else f"unknown {bad[0]!r} (choose {', '.join(map(str, choices))})"
    return check


# -- building ----------------------------------------------------------------------------------------
def _describe(hint: Any) -> str:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "a whole number"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if hint is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(map(str, arguments))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(argument) for argument in arguments)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        return "a list"
    if origin in (dict, Mapping) or hint is dict or dataclasses.is_dataclass(hint):
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


class _Mismatch(Exception):
    """A value that does not fit a type hint (caught to try the next member of a union)."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path
        self.message = message


def _join(path: str, key: Any) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else str(key))


def _convert(hint: Any, value: Any, path: str) -> Any:
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        for argument in arguments:
            if argument is type(None):
                continue
            try:
                return _convert(argument, value, path)
            except _Mismatch as mismatch:
                if mismatch.path != path:  # the value had the right shape but a bad element: report that
                    raise
        raise _Mismatch(path, f"expected {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if value in arguments:
            return value
        raise _Mismatch(path, f"expected {_describe(hint)}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is type(None):
        if value is None:
            return None
    elif origin in (list, Sequence) or hint is list:
        if isinstance(value, (list, tuple)):
            item = arguments[0] if arguments else Any
            return [_convert(item, element, _join(path, index)) for index, element in enumerate(value)]
    elif origin is tuple or hint is tuple:
        if isinstance(value, (list, tuple)):
            if len(arguments) == 2 and arguments[1] is Ellipsis:
                return tuple(_convert(arguments[0], element, _join(path, index)) for index, element in enumerate(value))
            if not arguments:
                return tuple(value)
            if len(value) == len(arguments):
                return tuple(_convert(argument, element, _join(path, index))
                             for index, (argument, element) in enumerate(zip(arguments, value)))
            raise _Mismatch(path, f"expected a list of {len(arguments)} values, got {value!r}")
    elif origin in (dict, Mapping) or hint is dict:
        if isinstance(value, Mapping):
            key_hint, value_hint = arguments if arguments else (Any, Any)
            return {_convert(key_hint, key, path): _convert(value_hint, element, _join(path, key))
                    for key, element in value.items()}
    elif isinstance(hint, type):
        if isinstance(value, hint):
            return value
    raise _Mismatch(path, f"expected {_describe(hint)}, got {value!r}")


def _build(cls: type[T], values: Any, path: str) -> T:
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise _Mismatch(path, f"expected a mapping (a section of keys), got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = [field for field in dataclasses.fields(cls) if field.init]
    keys = {(field.metadata.get("alias") or field.name): field for field in fields}
    for key in values:
        if key not in keys:
            raise _Mismatch(_join(path, key), f"unknown key (known: {', '.join(keys)})")
    arguments = {}
    for key, field in keys.items():
        where = _join(path, key)
        if key not in values:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise _Mismatch(where, "required key is missing")
            continue
        value = _convert(hints[field.name], values[key], where)
        check = field.metadata.get("check")
        problem = check(value) if check is not None and value is not None else None
        if problem:
            raise _Mismatch(where, f"{problem}, got {values[key]!r}")
        arguments[field.name] = value
    try:
        instance = cls(**arguments)
        if hasattr(instance, "validate"):
            instance.validate()
    except InvalidValue as error:
        raise _Mismatch(_join(path, error.key), error.message) from None
    except CMAAMError as error:
        raise _Mismatch(path, str(error)) from None
    return instance


def from_dict(cls: type[T], values: Any, where: str = "config") -> T:
    """Build the dataclass ``cls`` from plain data (a parsed YAML mapping), checking keys, types and values.

    ``where`` names the source (a file name) at the start of an error.
    """
    try:
        return _build(cls, values, "")
    except _Mismatch as mismatch:
        raise ConfigError(f"{where}: {mismatch.path + ': ' if mismatch.path else ''}{mismatch.message}") from None


def apply_overrides(values: dict, overrides: Sequence[str]) -> dict:
    """Apply ``KEY=VALUE`` assignments in place: KEY is a dotted path (a list index is a number, e.g.
    ``models.1.path``), VALUE is parsed as YAML (``0.7``, ``true``, ``null``, ``[basic, full]``)."""
    for assignment in overrides:
        if "=" not in assignment:
            raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE (e.g. data.korean_source=/data/ko)")
        key, raw = assignment.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {assignment!r}: empty key")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {key}: {raw!r} is not a valid YAML value "
                              f"({str(error).splitlines()[0]})") from None
        node: Any = values
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"--set {key}: {'.'.join(parts[:depth]) or 'the config'} is a list of "
                                      f"{len(node)}; {part!r} is not an index of it")
                part = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is not a section")
            if last:
                node[part] = value
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return values


def read_yaml(path: str | Path, missing: str | None = None) -> Any:
    """Parsed YAML (safe loader); CMAAMError when absent or malformed."""
    path = Path(path)
    if not path.is_file():
        raise CMAAMError(f"{path}: {missing or 'no such file'}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise CMAAMError(f"{path}: invalid YAML ({str(error).splitlines()[0]})") from None


def load_config(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
    """Read a YAML file into the dataclass ``cls``, after the ``KEY=VALUE`` overrides; errors name the file."""
    path = Path(path)
    values = read_yaml(path, "config not found")
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path.name}: expected a mapping of keys at the top, got {type(values).__name__}")
    return from_dict(cls, apply_overrides(values, overrides), path.name)
