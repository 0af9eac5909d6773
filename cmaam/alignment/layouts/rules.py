"""Classification rules: an ordered regex over parameter names -> (component, stack, layer)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from cmaam.core.errors import CMAAMError

COMPONENTS = ("vision_encoder", "cross_modal_bridge", "language_model", "shared_embedding")
DEFAULT_STACKS = {
    "vision_encoder": "vision",
    "cross_modal_bridge": "bridge",
    "language_model": "language",
    "shared_embedding": "embedding",
}


class ParamInfo(NamedTuple):
    """Where a parameter sits: its component, the stack of layers it belongs to, and its layer (or None)."""

    component: str
    stack: str
    layer: int | None


@dataclass(frozen=True)
class Rule:
    """One rule: ``pattern`` must match the whole name; ``layer`` names the capture group holding the index.

    ``bridge_output`` marks the bridge's 2-D output matrices (their rows live in the LLM's embedding
    space, used by the CMBC score); ``input_embedding`` marks the token embedding matrix.
    """

    pattern: str
    component: str
    stack: str | None = None
    layer: int | str | None = None
    bridge_output: bool = False
    input_embedding: bool = False
    regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise CMAAMError(f"rule {self.pattern!r}: unknown component {self.component!r} "
                             f"(choose {', '.join(COMPONENTS)})")
        try:
            regex = re.compile(self.pattern)
        except re.error as error:
            raise CMAAMError(f"rule {self.pattern!r}: invalid regular expression ({error})") from None
        if self.layer is not None:
            known = self.layer in regex.groupindex if isinstance(self.layer, str) else 1 <= self.layer <= regex.groups
            if not known:
                raise CMAAMError(f"rule {self.pattern!r}: layer group {self.layer!r} is not a capture group "
                                 f"of the pattern (it has {regex.groups})")
        object.__setattr__(self, "regex", regex)
        if self.stack is None:
            object.__setattr__(self, "stack", DEFAULT_STACKS[self.component])

    def match(self, name: str) -> ParamInfo | None:
        """The ParamInfo of ``name`` if this rule matches the whole name, else None."""
        found = self.regex.fullmatch(name)
        if found is None:
            return None
        index = found.group(self.layer) if self.layer is not None else None
        return ParamInfo(self.component, self.stack, int(index) if index is not None else None)
