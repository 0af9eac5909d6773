"""mergekit-moe's YAML, as is: the experts, where their MLPs come from, and how the router is initialised.

Loaded with the project's config loader (``cmaam.core.config``): unknown keys, wrong types and bad values are
one-line errors naming the file and the key (``moe.yaml: experts[1].positive_prompts: ...``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmaam.core.config import InvalidValue, at_least, from_dict, load_config, one_of, setting
from cmaam.core.errors import CMAAMError

# hidden (= hidden_last): the base model's hidden states at the prompts' last token (layer by layer);
# hidden_avg: averaged over the prompt; cheap_embed: the prompts' averaged token embeddings (the same for
# every layer); random: normal draws; uniform_random: uniform in +-1/sqrt(hidden), like a fresh nn.Linear.
GATE_MODES = ("hidden", "hidden_avg", "hidden_last", "cheap_embed", "random", "uniform_random")
PROMPT_MODES = ("hidden", "hidden_avg", "hidden_last", "cheap_embed")


@dataclass
class Expert:
    """One model whose MLPs become an expert in every layer (mergekit's ``Expert``)."""

    source_model: str
    positive_prompts: list[str] | None = None
    negative_prompts: list[str] | None = None
    noise_scale: float | None = setting(None, check=at_least(0))
    residual_scale: float | None = setting(None, check=at_least(0))

    def validate(self) -> None:
        if not self.source_model.strip():
            raise InvalidValue("source_model", "must be a path to a model folder")


@dataclass
class MoEConfig:
    """mergekit-moe's ``MoEMergeConfig``: base model (attention, norms, embeddings) plus expert MLPs."""

    base_model: str
    experts: list[Expert]
    gate_mode: str = setting("hidden", check=one_of(GATE_MODES))
    dtype: str | None = None  # bfloat16, float16, float32 (checked by the builder: no torch import here)
    experts_per_token: int = setting(2, check=at_least(1))
    shared_experts: list[Expert] | None = None
    architecture: str | None = None
    text: str = field(default="", init=False)  # the YAML as given (saved beside the model)

    def __post_init__(self) -> None:
        self.shared_experts = list(self.shared_experts or [])

    def validate(self) -> None:
        """mergekit-moe's checks (is_bad_config), as one-line errors naming the key."""
        if not self.base_model.strip():
            raise InvalidValue("base_model", "must be a path to a model folder")
        if not self.experts:
            raise InvalidValue("experts", "must list at least one expert (source_model, positive_prompts)")
        if len(self.experts) < self.experts_per_token:
            raise InvalidValue("experts_per_token", f"is {self.experts_per_token} but only {len(self.experts)} "
                                                    "expert(s) are listed")
        if self.gate_mode not in PROMPT_MODES:
            return
        for index, expert in enumerate(self.experts):
            if not expert.positive_prompts or not all(prompt.strip() for prompt in expert.positive_prompts):
                raise InvalidValue(f"experts[{index}].positive_prompts",
                                   f"gate_mode {self.gate_mode} needs non-empty prompts (or use gate_mode: random)")
        prompts = {(tuple(e.positive_prompts), tuple(e.negative_prompts or [])) for e in self.experts}
        if len(self.experts) > 1 and len(prompts) == 1:
            raise InvalidValue("experts", "every expert has the same prompts: the router could not tell them "
                                          "apart; give each expert prompts of what should be routed to it")
        with_prompts = [bool(e.positive_prompts) for e in self.shared_experts]
        if any(with_prompts) and not all(with_prompts):
            raise InvalidValue("shared_experts", "give prompts to every shared expert or to none")

    def check_distinct_experts(self, allow_identical: bool = False) -> None:
        """mergekit-moe refuses experts that are all one model in the prompt modes (no use without training)."""
        if (not allow_identical and self.gate_mode in PROMPT_MODES and len(self.experts) > 1
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


def parse_moe_config(data: Any, where: str = "config") -> MoEConfig:
    """Check a loaded mergekit-moe YAML mapping and return it as a ``MoEConfig``."""
    return from_dict(MoEConfig, data, where)


def load_moe_config(path: str | Path) -> MoEConfig:
    """Read a mergekit-moe YAML file."""
    config = load_config(MoEConfig, path)
    config.text = Path(path).read_text(encoding="utf-8")
    return config
