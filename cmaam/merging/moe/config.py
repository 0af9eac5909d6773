"""mergekit-moe's YAML, as is: the experts, where their MLPs come from, and how the router is initialised."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cmaam.core.errors import CMAAMError

# hidden: the base model's hidden states at the prompts' last token (layer by layer); hidden_avg: averaged over
# the prompt; cheap_embed: the prompts' averaged token embeddings (the same for every layer); random: normal
# draws; uniform_random: uniform in +-1/sqrt(hidden), like a fresh torch.nn.Linear.
GATE_MODES = ("hidden", "hidden_avg", "hidden_last", "cheap_embed", "random", "uniform_random")
PROMPT_MODES = ("hidden", "hidden_avg", "hidden_last", "cheap_embed")


@dataclass
class Expert:
    """One model whose MLPs become an expert in every layer (mergekit's ``Expert``)."""

    source_model: str
    positive_prompts: list[str] | None = None
    negative_prompts: list[str] | None = None
    noise_scale: float | None = None
    residual_scale: float | None = None


@dataclass
class MoEConfig:
    """mergekit-moe's ``MoEMergeConfig``: base model (attention, norms, embeddings) plus expert MLPs."""

    base_model: str
    experts: list[Expert]
    gate_mode: str = "hidden"
    dtype: str | None = None
    experts_per_token: int = 2
    shared_experts: list[Expert] = field(default_factory=list)
    architecture: str | None = None
    text: str = ""  # the YAML as given (saved beside the model)

    def validate(self, allow_identical_experts: bool = False) -> None:
        """mergekit-moe's checks (is_bad_config), as one-line errors."""
        if self.gate_mode not in GATE_MODES:
            raise CMAAMError(f"gate_mode: unknown {self.gate_mode!r} (choose {', '.join(GATE_MODES)})")
        if self.experts_per_token < 1:
            raise CMAAMError(f"experts_per_token must be >= 1, got {self.experts_per_token}")
        if len(self.experts) < self.experts_per_token:
            raise CMAAMError(f"experts_per_token is {self.experts_per_token} but only {len(self.experts)} "
                             "expert(s) are listed")
        for where, expert in self.all_experts():
            for name in ("noise_scale", "residual_scale"):
                value = getattr(expert, name)
                if value is not None and not value >= 0:
                    raise CMAAMError(f"{where}.{name} must be >= 0, got {value}")
        if self.gate_mode in PROMPT_MODES:
            for index, expert in enumerate(self.experts):
                if not expert.positive_prompts or not all(p.strip() for p in expert.positive_prompts):
                    raise CMAAMError(f"experts[{index}] ({expert.source_model}): gate_mode {self.gate_mode} needs "
                                     "non-empty positive_prompts (or use gate_mode: random)")
            prompts = {(tuple(e.positive_prompts), tuple(e.negative_prompts or [])) for e in self.experts}
            if len(self.experts) > 1 and len(prompts) == 1:
                raise CMAAMError("every expert has the same prompts: the router could not tell them apart; give "
                                 "each expert prompts of what should be routed to it")
            with_prompts = [bool(e.positive_prompts) for e in self.shared_experts]
            if any(with_prompts) and not all(with_prompts):
                raise CMAAMError("shared_experts: give prompts to every shared expert or to none")
            if (not allow_identical_experts and len(self.experts) > 1
                    and len({e.source_model for e in self.experts}) == 1):
                raise CMAAMError("every expert is the same model: the MoE would compute the same output at a higher "
                                 "cost (pass --allow-identical-experts if you will train it)")

    def all_experts(self) -> list[tuple[str, Expert]]:
        """(``experts[i]`` / ``shared_experts[i]``, expert) for every expert."""
        return ([(f"experts[{i}]", e) for i, e in enumerate(self.experts)]
                + [(f"shared_experts[{i}]", e) for i, e in enumerate(self.shared_experts)])

    def referenced_models(self) -> list[str]:
        """Every model path used, base first, each once."""
        return list(dict.fromkeys([self.base_model, *(e.source_model for _, e in self.all_experts())]))


TOP_LEVEL_KEYS = ("base_model", "experts", "gate_mode", "dtype", "experts_per_token", "shared_experts", "architecture")
EXPERT_KEYS = ("source_model", "positive_prompts", "negative_prompts", "noise_scale", "residual_scale")


def _strings(value: Any, where: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise CMAAMError(f"{where}: expected a list of strings, got {value!r}")
    return value


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CMAAMError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _experts(items: Any, key: str, required: bool) -> list[Expert]:
    if items is None and not required:
        return []
    if not isinstance(items, list) or (required and not items):
        raise CMAAMError(f"{key}: expected a non-empty list of experts (each with source_model)")
    experts = []
    for index, entry in enumerate(items):
        where = f"{key}[{index}]"
        if not isinstance(entry, dict):
            raise CMAAMError(f"{where}: expected a mapping with source_model, got {entry!r}")
        unknown = [k for k in entry if k not in EXPERT_KEYS]
        if unknown:
            raise CMAAMError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(EXPERT_KEYS)})")
        source = entry.get("source_model")
        if not isinstance(source, str) or not source.strip():
            raise CMAAMError(f"{where}: source_model must be a path to a model folder, got {source!r}")
        experts.append(Expert(source, _strings(entry.get("positive_prompts"), f"{where}.positive_prompts"),
                              _strings(entry.get("negative_prompts"), f"{where}.negative_prompts"),
                              _number(entry.get("noise_scale"), f"{where}.noise_scale"),
                              _number(entry.get("residual_scale"), f"{where}.residual_scale")))
    return experts


def parse_moe_config(data: Any, text: str = "") -> MoEConfig:
    """Check a loaded mergekit-moe YAML document and return it as a ``MoEConfig`` (validated)."""
    if not isinstance(data, dict):
        raise CMAAMError(f"config: expected a mapping with base_model and experts, got {type(data).__name__}")
    unknown = [key for key in data if key not in TOP_LEVEL_KEYS]
    if unknown:
        raise CMAAMError(f"config: unknown key {unknown[0]!r} (allowed: {', '.join(TOP_LEVEL_KEYS)})")
    base = data.get("base_model")
    if not isinstance(base, str) or not base.strip():
        raise CMAAMError(f"base_model: a path to a model folder is required, got {base!r}")
    for key in ("gate_mode", "dtype", "architecture"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise CMAAMError(f"{key}: expected a string, got {data[key]!r}")
    per_token = data.get("experts_per_token", 2)
    if isinstance(per_token, bool) or not isinstance(per_token, int):
        raise CMAAMError(f"experts_per_token: expected a whole number, got {per_token!r}")
    return MoEConfig(base, _experts(data.get("experts"), "experts", True), data.get("gate_mode") or "hidden",
                     data.get("dtype"), per_token, _experts(data.get("shared_experts"), "shared_experts", False),
                     data.get("architecture"), text)


def load_moe_config(path: str | Path) -> MoEConfig:
    """Read a mergekit-moe YAML file."""
    path = Path(path)
    if not path.is_file():
        raise CMAAMError(f"{path}: no such config file")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise CMAAMError(f"{path}: invalid YAML{f' at line {mark.line + 1}' if mark else ''}") from None
    return parse_moe_config(data, text)
