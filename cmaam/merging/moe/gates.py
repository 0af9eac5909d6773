"""Router (gate) initialisation, as mergekit-moe: one vector per expert and layer, from prompts or random.

hidden / hidden_last: the base model's hidden states entering each layer at the prompts' last token (the
prompts left-padded in one batch, prefixed with the BOS token), averaged over the prompts; hidden_avg: the
same averaged over each prompt's tokens first. The model runs in bfloat16 and the vectors are formed in
bfloat16, as mergekit does, so the gates equal mergekit's; it runs layer by layer from the checkpoint
(``LayerStreamedDecoder``), one decoder layer in memory at a time. cheap_embed: the prompts' summed token embeddings,
normalised, the same for every layer. Negative prompts are subtracted; each vector is normalised to length 1.
random / uniform_random: N(0, 1) / U(-1/sqrt(hidden), 1/sqrt(hidden)) draws from a generator seeded with
``seed`` (torch.manual_seed(seed) draws the same numbers, which mergekit-moe uses with --random-seed).
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
from tqdm import tqdm

from cmaam.io import CheckpointReader
from cmaam.merging.moe.config import Expert

logger = logging.getLogger(__name__)
EMBEDDING = "model.embed_tokens.weight"


def load_tokenizer(path: str):
    """The base model's tokenizer, set up for the prompts as mergekit-moe does (left padding, BOS or EOS pad)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    tokenizer.pad_token_id = tokenizer.bos_token_id
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenize(prompts: list[str], tokenizer) -> dict[str, torch.Tensor]:
    return tokenizer([(tokenizer.bos_token or "") + prompt for prompt in prompts], return_tensors="pt",
                     padding=True, add_special_tokens=False)


def embedding_vector(embedding: torch.Tensor, tokens: dict[str, torch.Tensor], layers: int) -> torch.Tensor:
    """Sum of the prompts' token embeddings (padding excluded), normalised, repeated for every layer."""
    rows = embedding.float()[tokens["input_ids"]]  # (prompts, length, hidden)
    total = (rows * tokens["attention_mask"].unsqueeze(-1)).sum(dim=1).sum(dim=0, keepdim=True)
    return (total / total.norm(dim=-1, keepdim=True).clamp(min=1e-8)).repeat(layers, 1)


class LayerStreamedDecoder:
    """The base model's decoder in bfloat16 with its weights on the meta device: a layer's weights are read from
    the checkpoint just before it runs and dropped after, so a forward pass holds one decoder layer (plus the
    embedding and final norm) instead of the model. Same modules, same kernels: the same hidden states as the
    model loaded whole (the MoE tests compare the gates with mergekit-moe's, which loads it whole)."""

    def __init__(self, path: str, reader: CheckpointReader, device: str = "cpu"):
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        self.decoder = model.model
        self.reader, self.device = reader, torch.device(device)
        rotary = self.decoder.rotary_emb  # its frequencies are computed, not stored: rebuild them for real
        self.decoder.rotary_emb = type(rotary)(self.decoder.config).to(self.device)
        self._load(self.decoder.embed_tokens, "model.embed_tokens")
        self._load(self.decoder.norm, "model.norm")
        for index, layer in enumerate(self.decoder.layers):
            prefix = f"model.layers.{index}"
            layer.register_forward_pre_hook(lambda module, args, prefix=prefix: self._load(module, prefix))
            layer.register_forward_hook(lambda module, args, output: self._drop(module))
        self.decoder.eval()

    def _load(self, module: torch.nn.Module, prefix: str) -> None:
        for name, parameter in list(module.named_parameters()):
            owner, _, leaf = name.rpartition(".")
            tensor = self.reader.get(f"{prefix}.{name}").to(device=self.device, dtype=parameter.dtype)
            module.get_submodule(owner)._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)

    @staticmethod
    def _drop(module: torch.nn.Module) -> None:
        for name, parameter in list(module.named_parameters()):
            owner, _, leaf = name.rpartition(".")
            module.get_submodule(owner)._parameters[leaf] = torch.nn.Parameter(
                torch.empty_like(parameter, device="meta"), requires_grad=False)

    def __call__(self, **inputs):
        return self.decoder(**{key: value.to(self.device) for key, value in inputs.items()}, **{
            "output_hidden_states": True, "return_dict": True, "use_cache": False})


def hidden_vector(model: LayerStreamedDecoder, tokens: dict[str, torch.Tensor], average: bool) -> torch.Tensor:
    """(layers, hidden): the states entering each layer at the last token (or averaged), mean over prompts."""
    with torch.no_grad():
        output = model(**tokens)
    states = torch.stack(output.hidden_states[:-1])  # (layers, prompts, length, hidden)
    states = states.sum(dim=2) / states.shape[2] if average else states[:, :, -1, :]
    return states.sum(dim=1) / states.shape[1]


def gate_vectors(mode: str, base: str, reader: CheckpointReader, experts: list[Expert], seed: int = 0,
                 device: str = "cpu", progress: bool = True) -> torch.Tensor:
    """(layers, experts, hidden) router rows for ``experts`` in ``mode`` (see the module docstring)."""
    config = reader.config
    layers, hidden = config["num_hidden_layers"], config["hidden_size"]
    shape = (layers, len(experts), hidden)
    if mode == "random":
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if mode == "uniform_random":
        scale = math.sqrt(1.0 / hidden)
        return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 * scale - scale
    tokenizer = load_tokenizer(base)
    vector: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    if mode == "cheap_embed":
        embedding = reader.get(EMBEDDING)

        def vector(tokens):
            return embedding_vector(embedding, tokens, layers)
    else:
        model = LayerStreamedDecoder(base, reader, device)

        def vector(tokens):
            return hidden_vector(model, tokens, average=mode == "hidden_avg")
    rows = []
    for expert in tqdm(experts, desc="expert prompts", disable=not progress, leave=False):
        states = vector(tokenize(expert.positive_prompts, tokenizer))
        if expert.negative_prompts:
            states -= vector(tokenize(expert.negative_prompts, tokenizer))
        states /= states.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)
        rows.append(states)
    warn_degenerate(torch.stack(rows, dim=0).permute(1, 0, 2))
    return torch.stack(rows, dim=0).permute(1, 0, 2).cpu()


def warn_degenerate(gates: torch.Tensor, threshold: float = 5.0) -> None:
    """Log the layers whose expert vectors are nearly linearly dependent (condition number > ``threshold``)."""
    layers = [index for index in range(gates.shape[0]) if torch.linalg.cond(gates[index].float()) > threshold]
    if layers:
        logger.warning("layers %s have nearly dependent router vectors: the prompts may be too similar, and some "
                       "experts will be used little", ", ".join(map(str, layers)))
