"""Merge methods: one small module per method, each a pure tensor function registered by name."""

from cmaam.merging.methods.registry import METHODS, MergeMethod, Parameter, get_method, list_methods, register
from cmaam.merging.methods import (  # noqa: F401  (registration side effects)
    arcee_fusion,
    breadcrumbs,
    dare,
    della,
    isotropic,
    karcher,
    linear,
    model_stock,
    multislerp,
    nearswap,
    nuslerp,
    passthrough,
    ram,
    sce,
    slerp,
    task_arithmetic,
    ties,
    tsv,
    wudi,
)

__all__ = ["METHODS", "MergeMethod", "Parameter", "get_method", "list_methods", "register"]
