"""User rule tables in YAML, for architectures without a built-in layout (format: docs/layouts.md)."""

from __future__ import annotations

from pathlib import Path


from cmaam.core.errors import CMAAMError
from cmaam.alignment.layouts.builtin import builtin_layout, canonical_model_type
from cmaam.alignment.layouts.layout import Layout
from cmaam.alignment.layouts.rules import Rule

TOP_KEYS = {"name", "description", "extends", "rules"}
RULE_KEYS = {"pattern", "component", "stack", "layer", "bridge_output", "input_embedding"}


def _rule(entry: object, index: int, path: Path) -> Rule:
    where = f"{path}: rule {index + 1}"
    if not isinstance(entry, dict):
        raise CMAAMError(f"{where}: expected a mapping with pattern and component, got {type(entry).__name__}")
    unknown = sorted(set(entry) - RULE_KEYS)
    if unknown:
        raise CMAAMError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} "
                         f"(allowed: {', '.join(sorted(RULE_KEYS))})")
    for key in ("pattern", "component"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise CMAAMError(f"{where}: {key!r} is required and must be a string")
    layer = entry.get("layer")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, (int, str))):
        raise CMAAMError(f"{where}: 'layer' must be a capture group number or name, got {layer!r}")
    try:
        return Rule(entry["pattern"], entry["component"], entry.get("stack"), layer,
                    bool(entry.get("bridge_output", False)), bool(entry.get("input_embedding", False)))
    except CMAAMError as error:
        raise CMAAMError(f"{where}: {error}") from None


def load_rules_file(path: str | Path) -> Layout:
    """Read a YAML rule table; with ``extends: <model type>`` the built-in rules follow the user's."""
    from cmaam.io.files import read_yaml

    path = Path(path)
    data = read_yaml(path, "no such rules file")
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list) or not data["rules"]:
        raise CMAAMError(f"{path}: expected a mapping with a non-empty 'rules' list")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise CMAAMError(f"{path}: unknown key(s) {', '.join(map(str, unknown))} "
                         f"(allowed: {', '.join(sorted(TOP_KEYS))})")
    rules = [_rule(entry, index, path) for index, entry in enumerate(data["rules"])]
    if data.get("extends"):
        rules += builtin_layout(canonical_model_type(str(data["extends"]))).rules
    return Layout(str(data.get("name") or path.stem), tuple(rules), str(data.get("description", "")))
