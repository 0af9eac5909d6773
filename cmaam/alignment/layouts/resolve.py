"""Finding the layout of a model: a user rules file, an explicit model type, or its config.json."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from cmaam.core.errors import CMAAMError
from cmaam.alignment.layouts.builtin import (ARCHITECTURES, BUILTIN, SPELLINGS, builtin_layout, canonical_model_type,
                                             normalize_type_name)
from cmaam.alignment.layouts.layout import Layout
from cmaam.alignment.layouts.rules_file import load_rules_file


def _config_dict(config) -> dict:
    if isinstance(config, Mapping):
        return dict(config)
    if hasattr(config, "to_dict"):  # a transformers PretrainedConfig
        return config.to_dict()
    from cmaam.io import load_config

    path = Path(config)
    return load_config(path.parent if path.is_file() else path)


def detect_model_type(config: Mapping | str | Path) -> str:
    """The built-in model type of a config (dict, PretrainedConfig, model folder or config.json): ``model_type``,
    else ``architectures``."""
    data = _config_dict(config)
    declared = data.get("model_type")
    if isinstance(declared, str) and normalize_type_name(declared) in SPELLINGS:
        return SPELLINGS[normalize_type_name(declared)]
    architectures = data.get("architectures") or []
    for architecture in architectures:
        if architecture in ARCHITECTURES:
            return ARCHITECTURES[architecture]
    raise CMAAMError(f"no built-in layout for model_type {declared!r} (architectures {architectures}); "
                     f"pass --model-type ({', '.join(BUILTIN)}) or a YAML rules file "
                     "(--rules-file, see docs/layouts.md)")


def get_layout(model_type: str | None = None, config: Mapping | str | Path | None = None,
               rules_file: str | Path | None = None) -> Layout:
    """The layout to classify a model's parameters: a rules file, else an explicit model type, else the config's."""
    if rules_file is not None:
        if model_type is not None:
            raise CMAAMError("give either a model type or a rules file, not both "
                             "(a rules file can build on a built-in type with 'extends:')")
        return load_rules_file(rules_file)
    if model_type is not None:
        return builtin_layout(canonical_model_type(model_type))
    if config is not None:
        return builtin_layout(detect_model_type(config))
    raise CMAAMError("cannot choose a layout: give a model type, a config or a rules file")
