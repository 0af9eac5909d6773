"""The MoE output architectures mergekit-moe writes (Mixtral, Qwen2-MoE, Qwen3-MoE): which configs each
accepts, its config.json, and where every output tensor comes from (same names and layouts as mergekit-moe).

Mixtral and Qwen3-MoE store a layer's experts stacked, as transformers 5 does:
``mlp.experts.gate_up_proj`` (experts, 2 x intermediate, hidden) = [gate_proj; up_proj] per expert, and
``mlp.experts.down_proj`` (experts, hidden, intermediate). Qwen2-MoE keeps one tensor per expert
(``mlp.experts.{i}.gate_proj.weight`` ...) plus the shared expert and its gate; transformers stacks them on
load.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch

from cmaam.core.errors import CMAAMError
from cmaam.merging.moe.config import Expert, MoEConfig

logger = logging.getLogger(__name__)
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


@dataclass
class Piece:
    """Part of an output tensor read from an input: ``name`` of ``model``, written from flat element ``offset``."""

    model: str
    name: str
    offset: int = 0
    expert: Expert | None = None  # noise_scale / residual_scale apply
    residual: bool = False  # a down projection (residual_scale applies)


@dataclass
class OutputTensor:
    """One output tensor: read from ``pieces``, or computed by ``make`` (router rows, zero biases)."""

    name: str
    shape: tuple[int, ...]
    pieces: list[Piece] = field(default_factory=list)
    make: Callable[[], torch.Tensor] | None = None


@dataclass
class Layout:
    """What an output architecture needs to write: its config and its tensors."""

    config: dict
    tensors: list[OutputTensor]


def _types(config: MoEConfig, model_types: dict[str, str], shared: bool = True) -> set[str]:
    models = [config.base_model] + [e.source_model for e in config.experts]
    if shared:
        models += [e.source_model for e in config.shared_experts]
    return {model_types[model] for model in models}


class MoEArchitecture:
    """An output architecture: ``problem`` says why a config does not fit (None: it fits)."""

    name = ""
    model_type = ""
    accepted_types: tuple[str, ...] = ()
    shared_experts = 0  # how many shared experts the architecture has
    stacked = True  # experts stacked into gate_up_proj / down_proj (else one tensor per expert)

    def problem(self, config: MoEConfig, model_types: dict[str, str]) -> str | None:
        if len(config.shared_experts) != self.shared_experts:
            return (f"needs exactly {self.shared_experts} shared expert (got {len(config.shared_experts)})"
                    if self.shared_experts else "has no shared experts")
        types = _types(config, model_types)
        if len(types) > 1:
            return f"needs every model of one architecture (got {', '.join(sorted(types))})"
        if types.pop() not in self.accepted_types:
            return f"needs {' or '.join(self.accepted_types)} models"
        return None

    def output_config(self, base_config, config: MoEConfig) -> dict:
        raise NotImplementedError

    # -- tensors -----------------------------------------------------------------------------------------
    def layout(self, config: MoEConfig, readers: dict, routers: torch.Tensor, shared_routers: torch.Tensor,
               base_config) -> Layout:
        base = readers[config.base_model]
        layers = base.config["num_hidden_layers"]
        tensors = [OutputTensor(name, base.shape(name), [Piece(config.base_model, name)])
                   for name in base.keys() if ".mlp." not in name and "rotary_emb." not in name]
        tensors += self.extra_tensors(base, layers)
        for layer in range(layers):
            tensors += self.expert_tensors(config, readers, layer)
            tensors.append(OutputTensor(f"model.layers.{layer}.mlp.gate.weight", tuple(routers[layer].shape),
                                        make=lambda layer=layer: routers[layer]))
            tensors += self.shared_tensors(config, readers, layer, shared_routers)
        return Layout(self.output_config(base_config, config), tensors)

    def extra_tensors(self, base, layers: int) -> list[OutputTensor]:
        return []

    def shared_tensors(self, config: MoEConfig, readers: dict, layer: int, shared_routers: torch.Tensor
                       ) -> list[OutputTensor]:
        return []

    def expert_tensors(self, config: MoEConfig, readers: dict, layer: int) -> list[OutputTensor]:
        prefix = f"model.layers.{layer}.mlp"
        names = {projection: f"{prefix}.{projection}.weight" for projection in MLP_PROJECTIONS}
        base = readers[config.base_model]
        if not self.stacked:
            return [OutputTensor(f"{prefix}.experts.{index}.{projection}.weight", base.shape(name),
                                 [Piece(expert.source_model, name, 0, expert, projection == "down_proj")])
                    for index, expert in enumerate(config.experts) for projection, name in names.items()]
        intermediate, hidden = base.shape(names["gate_proj"])
        size = intermediate * hidden
        gate_up, down = [], []
        for index, expert in enumerate(config.experts):
            gate_up.append(Piece(expert.source_model, names["gate_proj"], 2 * index * size, expert))
            gate_up.append(Piece(expert.source_model, names["up_proj"], (2 * index + 1) * size, expert))
            down.append(Piece(expert.source_model, names["down_proj"], index * size, expert, residual=True))
        count = len(config.experts)
        return [OutputTensor(f"{prefix}.experts.gate_up_proj", (count, 2 * intermediate, hidden), gate_up),
                OutputTensor(f"{prefix}.experts.down_proj", (count, hidden, intermediate), down)]


def qwen_moe_config(config_class, architecture: str, base_config, config: MoEConfig):
    """A Qwen2/Qwen3-MoE config from the dense base's, as mergekit-moe sets it: every layer sparse, top-k
    probabilities renormalised, experts as wide as the base MLP."""
    output = config_class(**base_config.to_dict())
    output.architectures = [architecture]
    output.num_experts = len(config.experts)
    output.num_experts_per_tok = config.experts_per_token
    output.decoder_sparse_step = 1
    output.norm_topk_prob = True
    output.moe_intermediate_size = output.intermediate_size
    return output


class Mixtral(MoEArchitecture):
    name = "Mixtral"
    model_type = "mixtral"
    accepted_types = ("llama", "mistral")

    def output_config(self, base_config, config):
        import transformers

        if not isinstance(base_config, transformers.MistralConfig):
            mistral = transformers.MistralConfig(**base_config.to_dict())
            mistral.sliding_window = None
            mistral.max_position_embeddings = base_config.max_position_embeddings
            base_config = mistral
        output = transformers.MixtralConfig(**base_config.to_dict())
        output.architectures = ["MixtralForCausalLM"]
        output.num_local_experts = len(config.experts)
        output.num_experts_per_tok = config.experts_per_token
        output.sliding_window = None
        return output.to_diff_dict()


class Qwen2MoE(MoEArchitecture):
    name = "Qwen2-MoE"
    model_type = "qwen2_moe"
    accepted_types = ("llama", "mistral", "qwen2")
    shared_experts = 1
    stacked = False

    def problem(self, config, model_types):
        problem = super().problem(config, model_types)
        if problem is None and config.gate_mode != "random" and not config.shared_experts[0].positive_prompts:
            return "needs prompts for the shared expert's gate (or gate_mode: random)"
        return problem

    def output_config(self, base_config, config):
        from transformers.models.qwen2_moe import Qwen2MoeConfig

        output = qwen_moe_config(Qwen2MoeConfig, "Qwen2MoeForCausalLM", base_config, config)
        output.sliding_window = None
        output.use_sliding_window = False
        output.shared_expert_intermediate_size = output.intermediate_size
        return output.to_diff_dict()

    def extra_tensors(self, base, layers):
        """Zero q/k/v biases where the base (Llama, Mistral) has none: Qwen2-MoE attention has them."""
        tensors = []
        for layer in range(layers):
            for projection in ("q_proj", "k_proj", "v_proj"):
                name = f"model.layers.{layer}.self_attn.{projection}"
                if f"{name}.bias" not in base:
                    rows = base.shape(f"{name}.weight")[0]
                    tensors.append(OutputTensor(f"{name}.bias", (rows,), make=lambda rows=rows: torch.zeros(rows)))
        return tensors

    def shared_tensors(self, config, readers, layer, shared_routers):
        shared = config.shared_experts[0]
        prefix = f"model.layers.{layer}.mlp"
        base = readers[config.base_model]
        tensors = [OutputTensor(f"{prefix}.shared_expert.{projection}.weight",
                                base.shape(f"{prefix}.{projection}.weight"),
                                [Piece(shared.source_model, f"{prefix}.{projection}.weight", 0, shared,
                                       projection == "down_proj")])
                   for projection in MLP_PROJECTIONS]
        tensors.append(OutputTensor(f"{prefix}.shared_expert_gate.weight", tuple(shared_routers[layer].shape),
                                    make=lambda: shared_routers[layer]))
        return tensors


class Qwen3MoE(MoEArchitecture):
    name = "Qwen3-MoE"
    model_type = "qwen3_moe"
    accepted_types = ("qwen3",)

    def output_config(self, base_config, config):
        from transformers.models.qwen3_moe import Qwen3MoeConfig

        return qwen_moe_config(Qwen3MoeConfig, "Qwen3MoeForCausalLM", base_config, config).to_diff_dict()


ARCHITECTURES: tuple[MoEArchitecture, ...] = (Mixtral(), Qwen2MoE(), Qwen3MoE())
# mergekit-moe's ``architecture:`` matches the start of its names: "Mixtral", "Qwen MoE", "Qwen3 MoE".
REQUESTED = {"mixtral": "Mixtral", "qwen": None, "qwen2": "Qwen2-MoE", "qwen moe": "Qwen2-MoE",
             "qwen2_moe": "Qwen2-MoE", "qwen3": "Qwen3-MoE", "qwen3 moe": "Qwen3-MoE", "qwen3_moe": "Qwen3-MoE"}


def select_architecture(config: MoEConfig, model_types: dict[str, str]) -> MoEArchitecture:
    """The output architecture for ``config`` as mergekit-moe picks it: the requested one if it fits, else
    Mixtral when it fits, else the first that fits; one-line error saying why none does."""
    candidates = list(ARCHITECTURES)
    if config.architecture is not None:
        wanted = config.architecture.strip().lower()
        if wanted.startswith("deepseek"):
            raise CMAAMError("architecture: DeepSeek MoE output is not supported (it needs remote code); "
                             "choose mixtral, qwen2_moe or qwen3_moe")
        if wanted not in REQUESTED:
            raise CMAAMError(f"architecture: unknown {config.architecture!r} (choose mixtral, qwen2_moe or qwen3_moe)")
        candidates = [a for a in candidates if REQUESTED[wanted] in (None, a.name) and
                      (REQUESTED[wanted] is not None or a.name.startswith("Qwen"))]
    reasons = {a.name: a.problem(config, model_types) for a in candidates}
    fitting = [a for a in candidates if reasons[a.name] is None]
    if not fitting:
        raise CMAAMError("no MoE output architecture fits this config: "
                         + "; ".join(f"{name} {reason}" for name, reason in reasons.items()))
    return fitting[0]
