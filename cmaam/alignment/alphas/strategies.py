"""Alpha strategies as registered objects: how tensors are grouped (one alpha per group) and how a
group's alignment is formed. ``STRATEGIES`` is the one list of names (a live view of the registry):
the merge and layouts CLIs, AlphaConfig and the experiment config all check against it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

from cmaam.alignment.layouts.rules import DEFAULT_STACKS, ParamInfo
from cmaam.core.errors import CMAAMError


@dataclass(frozen=True)
class Strategy:
    """A grouping strategy: ``group_key`` names the alpha group of a parameter; ``combine``, when set,
    forms the alignment A from its component's and its group's (A_component, A_group) -> A (then every
    group must lie inside one component); without it A = A_group."""

    name: str
    group_key: Callable[[ParamInfo], str]
    combine: Callable[[float, float], float] | None = None
    description: str = ""

    def groups(self, infos: Mapping[str, ParamInfo]) -> dict[str, list[str]]:
        """Names grouped by ``group_key``, groups in first-seen order."""
        grouped: dict[str, list[str]] = {}
        for name, info in infos.items():
            grouped.setdefault(self.group_key(info), []).append(name)
        return grouped


STRATEGY_REGISTRY: dict[str, Strategy] = {}
STRATEGIES = STRATEGY_REGISTRY.keys()  # the names, in registration order; follows later registrations


def register_strategy(strategy: Strategy, replace: bool = False) -> Strategy:
    """Make ``strategy`` usable by name (merge --strategy, AlphaConfig, experiment configs)."""
    if strategy.name in STRATEGY_REGISTRY and not replace:
        raise CMAAMError(f"strategy {strategy.name!r} is already registered (pass replace=True to replace it)")
    STRATEGY_REGISTRY[strategy.name] = strategy
    return strategy


def get_strategy(name: str) -> Strategy:
    """Look a strategy up by name (one-line error listing the known names)."""
    if name not in STRATEGY_REGISTRY:
        raise CMAAMError(f"unknown strategy {name!r} (choose {', '.join(STRATEGIES)})")
    return STRATEGY_REGISTRY[name]


def _layerwise(info: ParamInfo) -> str:
    return info.component if info.layer is None else f"{info.stack}.{info.layer}"


def _full(info: ParamInfo) -> str:
    if info.layer is None:
        return info.component
    if info.stack == DEFAULT_STACKS[info.component]:
        return f"{info.component}.{info.layer}"
    return f"{info.component}.{info.stack}.{info.layer}"


register_strategy(Strategy("basic", lambda info: "model", description="one alpha for the whole model"))
register_strategy(Strategy("component", lambda info: info.component, description="one alpha per component"))
register_strategy(Strategy(
    "layerwise", _layerwise,
    description="one alpha per layer of each stack (stack.layer; vision block k != LLM layer k); "
                "non-layer tensors by component"))
register_strategy(Strategy(
    "full", _full, combine=lambda component, group: math.sqrt(component * group),
    description="one alpha per component layer (component.layer, component.stack.layer for a component's "
                "extra stacks), A = sqrt(A_component * A_group)"))
