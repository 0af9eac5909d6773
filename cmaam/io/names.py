"""Tensor names across transformers versions: the same weight as a checkpoint, a peft adapter and a model name it.

transformers 5 builds Qwen2-VL's language model as ``model.language_model.layers.N`` and its vision tower as
``model.visual``, but saves (and the hub stores) ``model.layers.N`` and ``visual``; LLaVA hub checkpoints use
``language_model.model.layers.N`` and ``language_model.lm_head``. peft adapters name modules as the running model
does. Stripping the leading wrapper segments ``model.``, ``language_model.`` and ``transformer.`` gives one *core
name* for all of these spellings, so names are matched through it when they are not equal.
"""

from __future__ import annotations

from typing import Iterable

from cmaam.core.errors import CMAAMError

WRAPPER_SEGMENTS = ("model.", "language_model.", "transformer.")


def core_name(name: str) -> str:
    """``name`` without its leading wrapper segments (``model.language_model.layers.0.x``,
    ``language_model.model.layers.0.x`` and ``model.layers.0.x`` all give ``layers.0.x``)."""
    stripped = True
    while stripped:
        stripped = False
        for segment in WRAPPER_SEGMENTS:
            if name.startswith(segment) and len(name) > len(segment):
                name, stripped = name[len(segment):], True
    return name


class NameIndex:
    """The tensor names of one checkpoint, looked up exactly or through their core name."""

    def __init__(self, names: Iterable[str]):
        self.names = list(names)
        self._exact = set(self.names)
        self._core: dict[str, list[str]] = {}
        for name in self.names:
            self._core.setdefault(core_name(name), []).append(name)

    def find(self, name: str) -> str | None:
        """The checkpoint's name for ``name`` (another spelling of it), None when it has none.

        A core name shared by several checkpoint names is ambiguous: a CMAAMError names them.
        """
        if name in self._exact:
            return name
        found = self._core.get(core_name(name), [])
        if len(found) > 1:
            raise CMAAMError(f"{name!r} matches several tensors ({', '.join(found[:3])}); "
                             "give the mapping explicitly")
        return found[0] if found else None
