"""AdaMerging (Yang et al., ICLR 2024) for a fine-tune merged back into its base.

One coefficient per group of the alpha plan (``basic``: one for the whole model, task-wise
AdaMerging; ``layerwise``/``full``: one per layer group, layer-wise AdaMerging) is learned by
minimising the Shannon entropy of the merged model's next-token predictions on unlabeled inputs.
The merged model ``T + alpha_g * (S - T)`` is evaluated functionally (``torch.func.functional_call``):
no checkpoint is written per step. Adam (lr 1e-3 in the paper), coefficients kept in [0, 1].

Where this departs from the paper (docs/merge.md, "Adaptive coefficients"): the prediction is a
language model's next token, not a class, so the entropy is taken at the first ``answer_tokens``
positions of the merged model's own greedy answer; the box constraint is a projection after each
step (the paper clamps inside the forward pass, which freezes a coefficient that leaves the box);
batches cycle through the inputs in seeded shuffled epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from tqdm.auto import tqdm

from cmaam.core.errors import CMAAMError
from cmaam.search.adaptive import MergeSpace, UnlabeledInput, round_float


@dataclass
class AdaMergingConfig:
    """Settings of the coefficient search (the paper's: Adam, lr 1e-3, coefficients in [0, 1])."""

    steps: int = 100
    lr: float = 1e-3
    batch_size: int = 16
    answer_tokens: int = 1  # entropy over the first k positions of the greedy answer (1: the next token)
    seed: int = 0
    progress: bool = True

    def validate(self) -> None:
        """One-line errors for values outside their ranges."""
        for name in ("steps", "batch_size", "answer_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CMAAMError(f"--adapt-{name.replace('_', '-')} must be a whole number of at least 1, "
                                 f"got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise CMAAMError(f"--adapt-lr must be a positive number, got {self.lr!r}")


@dataclass
class AdaMergingResult:
    """Learned coefficients per group, the entropy curve and before/after entropies per input set."""

    groups: list[str]
    changed: list[bool]
    initial: list[float]
    alphas: list[float]
    curve: list[float] = field(default_factory=list)  # mean entropy of each step's batch, before its update
    entropy: dict[str, dict[str, float]] = field(default_factory=dict)  # set -> {before, after, inputs}
    config: AdaMergingConfig = field(default_factory=AdaMergingConfig)

    def report(self) -> dict:
        """The JSON section for report.json (floats to 8 significant digits)."""
        return {
            "method": "adamerging",
            "settings": {key: value for key, value in vars(self.config).items() if key != "progress"},
            "groups": {group: {"initial": round_float(start), "alpha": round_float(alpha), "changed": changed}
                       for group, start, alpha, changed in zip(self.groups, self.initial, self.alphas, self.changed)},
            "entropy": {name: {key: round_float(value) if isinstance(value, float) else value
                               for key, value in values.items()} for name, values in self.entropy.items()},
            "entropy_curve": [round_float(value) for value in self.curve],
        }

    def figure(self):
        """Two panels: the entropy per step, and each group's coefficient before and after."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, (curve, bars) = plt.subplots(1, 2, figsize=(max(9.0, 0.35 * len(self.groups) + 6), 3.8),
                                             gridspec_kw={"width_ratios": [1, 1.4]})
        curve.plot(range(1, len(self.curve) + 1), self.curve, lw=1, label="batch")
        for name, values in self.entropy.items():
            curve.axhline(values["after"], ls="--", lw=1, color="tab:green" if name == "adapt" else "tab:red",
                          label=f"{name}: {values['before']:.3f} -> {values['after']:.3f}")
        curve.set_xlabel("step")
        curve.set_ylabel("entropy (nats)")
        curve.set_title("AdaMerging: entropy of the merged model")
        curve.legend(fontsize=7)
        positions = range(len(self.groups))
        bars.bar([p - 0.2 for p in positions], self.initial, 0.4, label="initial", color="tab:gray")
        bars.bar([p + 0.2 for p in positions], self.alphas, 0.4, label="learned", color="tab:blue")
        bars.set_xticks(list(positions), [g + ("" if c else " (unchanged)") for g, c in zip(self.groups, self.changed)],
                        rotation=60, ha="right", fontsize=7)
        bars.set_ylim(0, 1)
        bars.set_ylabel("alpha")
        bars.legend(fontsize=7)
        figure.tight_layout()
        return figure



def _extend(inputs: dict, tokens: torch.Tensor, alive: torch.Tensor) -> dict:
    """Append one generated token per row (attention 0 once a row has ended)."""
    extended = dict(inputs)
    length = inputs["input_ids"].shape
    for key, value in inputs.items():
        if torch.is_tensor(value) and value.shape[:2] == length:
            column = tokens[:, None] if key == "input_ids" else (
                alive[:, None].to(value.dtype) if key == "attention_mask" else torch.zeros_like(value[:, :1]))
            extended[key] = torch.cat([value, column.to(value.dtype)], dim=1)
    return extended


def answer_entropy(space: MergeSpace, coefficients: torch.Tensor, inputs: dict, answer_tokens: int,
                   eos_token_id: int | None) -> torch.Tensor:
    """Per-input mean entropy of the next-token distribution at the first ``answer_tokens`` answer positions.

    The answer is the merged model's own greedy continuation (taken without gradient); the entropy at
    every position up to and including the one that predicts its end-of-sequence token counts.
    """
    prompt_length = inputs["input_ids"].shape[1]
    rows = inputs["input_ids"].shape[0]
    valid = [torch.ones(rows, dtype=torch.bool, device=inputs["input_ids"].device)]
    with torch.no_grad():
        for _ in range(answer_tokens - 1):
            token = space.forward(coefficients.detach(), inputs)[:, -1].argmax(-1)
            alive = valid[-1] & (token != eos_token_id) if eos_token_id is not None else valid[-1]
            inputs = _extend(inputs, token, alive)
            valid.append(alive)
    logits = space.forward(coefficients, inputs)[:, prompt_length - 1:prompt_length - 1 + answer_tokens]
    log_probabilities = torch.log_softmax(logits, dim=-1)
    entropy = -(log_probabilities.exp() * log_probabilities).sum(-1)
    weights = torch.stack(valid, dim=1).to(entropy.dtype)
    return (entropy * weights).sum(1) / weights.sum(1)


def _eos(space: MergeSpace) -> int | None:
    tokenizer = getattr(space.processor, "tokenizer", space.processor)
    return tokenizer.eos_token_id


def mean_entropy(space: MergeSpace, coefficients: Sequence[float], inputs: Sequence[UnlabeledInput],
                 batch_size: int, answer_tokens: int) -> float:
    """The mean per-input entropy over a whole input set (no gradient; inputs in order)."""
    generator = space.generator(batch_size, 1)
    values = torch.tensor(list(coefficients), dtype=next(iter(space.task_vectors.values())).dtype)
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            batch = [item.request for item in inputs[start:start + batch_size]]
            encoded = generator.encode(batch).to(space.model.device)
            total += float(answer_entropy(space, values, encoded, answer_tokens, _eos(space)).sum())
    return total / len(inputs)


def adamerging(space: MergeSpace, inputs: Sequence[UnlabeledInput], initial: Sequence[float],
               config: AdaMergingConfig | None = None,
               held_out: Sequence[UnlabeledInput] | None = None) -> AdaMergingResult:
    """Learn one coefficient per group of ``space`` from ``initial`` by entropy minimisation on ``inputs``.

    ``held_out`` inputs are never trained on; their entropy before and after is reported.
    """
    config = config or AdaMergingConfig()
    config.validate()
    if not inputs:
        raise CMAAMError("AdaMerging needs at least one unlabeled input")
    dtype = next(iter(space.task_vectors.values())).dtype
    coefficients = torch.tensor([min(max(float(a), 0.0), 1.0) for a in initial], dtype=dtype,
                                device=space.model.device, requires_grad=True)
    start = coefficients.detach().tolist()
    sets = {"adapt": inputs, **({"held_out": held_out} if held_out else {})}
    entropy = {name: {"before": mean_entropy(space, start, items, config.batch_size, config.answer_tokens),
                      "inputs": len(items)} for name, items in sets.items()}
    optimizer = torch.optim.Adam([coefficients], lr=config.lr, betas=(0.9, 0.999), weight_decay=0.0)
    shuffler = torch.Generator().manual_seed(config.seed)
    generator = space.generator(config.batch_size, 1)
    order: list[int] = []
    curve = []
    for _ in tqdm(range(config.steps), desc="AdaMerging", unit="step", disable=not config.progress, leave=False):
        if len(order) < min(config.batch_size, len(inputs)):
            order += torch.randperm(len(inputs), generator=shuffler).tolist()
        batch, order = order[:config.batch_size], order[config.batch_size:]
        encoded = generator.encode([inputs[i].request for i in batch]).to(space.model.device)
        loss = answer_entropy(space, coefficients, encoded, config.answer_tokens, _eos(space)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            coefficients.clamp_(0.0, 1.0)  # projection onto the box
        curve.append(float(loss.detach()))
    learned = coefficients.detach().tolist()
    for name, items in sets.items():
        entropy[name]["after"] = mean_entropy(space, learned, items, config.batch_size, config.answer_tokens)
    changed = set(space.group_of.values())
    return AdaMergingResult(list(space.groups), [i in changed for i in range(len(space.groups))], start, learned,
                            curve, entropy, config)
