"""Router (gate) initialisation, as mergekit-moe: one vector per expert and layer, from prompts or random.

hidden / hidden_last: the base model's hidden states entering each layer at the prompts' last token (the
prompts left-padded in one batch, prefixed with the BOS token), averaged over the prompts; hidden_avg: the
same averaged over each prompt's tokens first. The model runs in bfloat16 and the vectors are formed in
bfloat16, as mergekit does, so the gates equal mergekit's. cheap_embed: the prompts' summed token embeddings,
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


def hidden_vector(model, tokens: dict[str, torch.Tensor], average: bool) -> torch.Tensor:
    """(layers, hidden): the states entering each layer at the last token (or averaged), mean over prompts."""
    with torch.no_grad():
        output = model(**{k: v.to(model.device) for k, v in tokens.items()}, output_hidden_states=True,
                       return_dict=True)
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
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16, device_map=device)
        model.eval()

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
