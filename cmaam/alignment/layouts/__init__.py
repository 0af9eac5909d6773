"""Component classifiers: every parameter name -> (component, stack, layer) for VLMs and text LLMs."""

from cmaam.alignment.layouts.builtin import ARCHITECTURES, BUILTIN, canonical_model_type, list_model_types
from cmaam.alignment.layouts.layout import Layout
from cmaam.alignment.layouts.resolve import detect_model_type, get_layout
from cmaam.alignment.layouts.rules import COMPONENTS, DEFAULT_STACKS, ParamInfo, Rule
from cmaam.alignment.layouts.rules_file import load_rules_file

__all__ = [
    "ARCHITECTURES", "BUILTIN", "COMPONENTS", "DEFAULT_STACKS", "Layout", "ParamInfo", "Rule",
    "canonical_model_type", "detect_model_type", "get_layout", "list_model_types", "load_rules_file",
]
