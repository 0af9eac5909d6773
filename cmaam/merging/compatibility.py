"""Are these checkpoints mergeable? Same architecture, tensor names and shapes: ``python -m cmaam.check A B ...``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cmaam.core.errors import CMAAMError
from cmaam.io import CheckpointReader
from cmaam.io.adapters import open_model

# Config fields that differ between otherwise identical checkpoints and say nothing about compatibility.
IGNORED_CONFIG_FIELDS = {"_name_or_path", "transformers_version", "dtype", "torch_dtype"}
# Kinds of difference that make a merge impossible (the others are reported for information).
BLOCKING = ("model_type", "architectures", "missing_tensor", "shape", "vocab_size")
MISSING = "—"


@dataclass
class Difference:
    """One row of the report: what differs, where, and each model's value."""

    kind: str  # model_type, architectures, missing_tensor, shape, vocab_size, dtype, config
    name: str
    values: list[str]

    @property
    def blocking(self) -> bool:
        return self.kind in BLOCKING


@dataclass
class CompatibilityReport:
    """The result of comparing checkpoints: ``compatible`` is False when any difference blocks a merge."""

    models: list[str]
    tensor_count: list[int]
    differences: list[Difference] = field(default_factory=list)

    @property
    def compatible(self) -> bool:
        return not any(d.blocking for d in self.differences)

    def table(self, limit: int = 50) -> str:
        """The differences as an aligned text table (at most ``limit`` rows per kind)."""
        header = ["kind", "name"] + [f"[{i}] {Path(m).name}" for i, m in enumerate(self.models)]
        rows, shown = [], {}
        for difference in self.differences:
            shown[difference.kind] = shown.get(difference.kind, 0) + 1
            if shown[difference.kind] <= limit:
                rows.append([difference.kind + ("" if difference.blocking else " (info)"), difference.name,
                             *difference.values])
        for kind, count in shown.items():
            if count > limit:
                rows.append([kind, f"... {count - limit} more", *[""] * len(self.models)])
        widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
        lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
                 for row in [header] + rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(lines)

    def summary(self) -> str:
        models = ", ".join(f"[{i}] {m} ({n} tensors)" for i, (m, n) in enumerate(zip(self.models, self.tensor_count)))
        blocking = sum(d.blocking for d in self.differences)
        verdict = "compatible" if self.compatible else f"NOT compatible ({blocking} blocking differences)"
        return f"{models}\n{verdict}"


def _text_config_value(config: dict, key: str):
    if key in config:
        return config[key]
    for nested in ("text_config", "language_config", "llm_config"):
        if isinstance(config.get(nested), dict) and key in config[nested]:
            return config[nested][key]
    return None


def _flatten(config: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in config.items():
        if key in IGNORED_CONFIG_FIELDS:
            continue
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_compatibility(paths: Sequence[str | Path], allow_pickle: bool = False,
                        adapter_base: str | Path | None = None) -> CompatibilityReport:
    """Compare model folders (or peft LoRA adapters, as their adapted models) by config and tensor headers
    (no tensor data is loaded)."""
    if len(paths) < 2:
        raise CMAAMError("give at least two model folders to compare")
    readers = [open_model(path, allow_pickle, adapter_base) for path in paths]
    try:
        return _compare(readers)
    finally:
        for reader in readers:
            reader.close()


def _compare(readers: list[CheckpointReader]) -> CompatibilityReport:
    report = CompatibilityReport([str(r.path) for r in readers], [len(r) for r in readers])
    add = report.differences.append
    for kind, value_of in (("model_type", lambda c: c.get("model_type")),
                           ("architectures", lambda c: ",".join(c.get("architectures") or []) or None),
                           ("vocab_size", lambda c: _text_config_value(c, "vocab_size"))):
        values = [value_of(r.config) for r in readers]
        if len(set(map(str, values))) > 1:
            add(Difference(kind, kind, [MISSING if v is None else str(v) for v in values]))
    names = list(dict.fromkeys(name for reader in readers for name in reader.keys()))
    for name in names:
        present = [name in reader for reader in readers]
        if not all(present):
            add(Difference("missing_tensor", name, ["present" if p else "MISSING" for p in present]))
            continue
        shapes = [reader.shape(name) for reader in readers]
        if len(set(shapes)) > 1:
            add(Difference("shape", name, ["x".join(map(str, s)) or "scalar" for s in shapes]))
        dtypes = [str(reader.dtype(name)).replace("torch.", "") for reader in readers]
        if len(set(dtypes)) > 1:
            add(Difference("dtype", name, dtypes))
    configs = [_flatten(r.config) for r in readers]
    for key in dict.fromkeys(k for config in configs for k in config):
        if key in ("model_type", "architectures", "vocab_size") or key.endswith(".vocab_size"):
            continue
        values = [config.get(key, MISSING) for config in configs]
        if len(set(map(repr, values))) > 1:
            add(Difference("config", key, [str(v) for v in values]))
    return report
