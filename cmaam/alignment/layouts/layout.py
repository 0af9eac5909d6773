"""A Layout: the ordered rule table of one architecture, classifying parameter names (first match wins)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from cmaam.core.errors import CMAAMError
from cmaam.alignment.layouts.rules import COMPONENTS, ParamInfo, Rule

MAX_LISTED_NAMES = 10


def format_names(names: list[str], limit: int = MAX_LISTED_NAMES) -> str:
    """``a, b, c`` for a short list, the first ``limit`` names and ``(and N more)`` for a long one."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} (and {len(names) - limit} more)"


@dataclass
class Layout:
    """Parameter-name classifier of one model type (or of a user rule table)."""

    model_type: str
    rules: tuple[Rule, ...]
    description: str = ""
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def _match(self, name: str) -> tuple[Rule, ParamInfo] | None:
        if name not in self._cache:
            self._cache[name] = next(((rule, info) for rule in self.rules if (info := rule.match(name))), None)
        return self._cache[name]

    def classify(self, name: str) -> ParamInfo:
        """The (component, stack, layer) of one parameter name; CMAAMError when no rule matches."""
        found = self._match(name)
        if found is None:
            raise self._unclassified_error([name])
        return found[1]

    def classify_all(self, names: Iterable[str]) -> dict[str, ParamInfo]:
        """Classify every name; one CMAAMError listing all the names no rule matches."""
        result, unknown = {}, []
        for name in names:
            found = self._match(name)
            if found is None:
                unknown.append(name)
            else:
                result[name] = found[1]
        if unknown:
            raise self._unclassified_error(unknown)
        return result

    def _unclassified_error(self, names: list[str]) -> CMAAMError:
        return CMAAMError(
            f"{len(names)} parameter name(s) match no rule of the {self.model_type!r} layout: {format_names(names)}; "
            "check --model-type or describe the architecture in a YAML rules file (--rules-file, see docs/layouts.md)"
        )

    def input_embedding(self, names: Iterable[str]) -> str | None:
        """The token-embedding tensor among ``names`` (None when there is none)."""
        found = [name for name in names if (match := self._match(name)) and match[0].input_embedding]
        if len(found) > 1:
            raise CMAAMError(f"{self.model_type}: several token-embedding tensors: {format_names(found)}")
        return found[0] if found else None

    def is_bridge_output(self, name: str) -> bool:
        """True for a bridge weight matrix whose output feeds the language model (False for unmatched names)."""
        found = self._match(name)
        return found is not None and found[0].bridge_output

    def bridge_outputs(self, names: Iterable[str]) -> list[str]:
        """The bridge output matrices among ``names``, in their given order."""
        return [name for name in names if self.is_bridge_output(name)]

    @property
    def has_bridge(self) -> bool:
        """True for vision-language layouts (some rule classifies into the cross-modal bridge)."""
        return any(rule.component == "cross_modal_bridge" for rule in self.rules)

    def component_counts(self, names: Iterable[str]) -> dict[str, int]:
        """How many of ``names`` fall in each component (all four components listed)."""
        counts = Counter(info.component for info in self.classify_all(names).values())
        return {component: counts.get(component, 0) for component in COMPONENTS}
