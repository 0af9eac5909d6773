"""Shared pieces of the label-free adaptive merges (AdaMerging, AdaMMS).

The pair is held in memory as the target T (the model that is merged into) plus one task vector
tau = S - T per parameter the fine-tune changed, grouped as the CMAAM alpha plan groups them. A
merge with one coefficient per group is then ``T + alpha_g * tau``: the same
``(1 - alpha) T + alpha S`` that ``cmaam.merge`` writes. Unlabeled inputs are VQA questions (a VQA
JSONL whose answers, if any, are ignored) or text prompts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from cmaam.alignment.alphas import AlphaPlan, get_strategy
from cmaam.alignment.layouts import Layout
from cmaam.core.errors import CMAAMError
from cmaam.io.reader import TensorNames
from eval.generation import GenerationRequest

logger = logging.getLogger(__name__)
ADAPT_METHODS = ("adamerging", "adamms")
PROMPT_FIELDS = ("prompt", "text")


@dataclass(frozen=True)
class UnlabeledInput:
    """One unlabeled input: the request the model answers, and the language its answers are normalised in."""

    id: str
    request: GenerationRequest
    lang: str = "en"


def load_unlabeled(path: str | Path, limit: int | None = None) -> list[UnlabeledInput]:
    """Unlabeled inputs from a VQA JSONL ({question, image?, lang?}; answers ignored), a JSONL of
    {prompt} / {text} records, or a .txt file with one prompt per line. Images are decoded once here."""
    from eval.generation import load_image
    from eval.readers import read_jsonl
    from eval.vqa import load_vqa_jsonl
    from eval.vqa.evaluate import vqa_requests

    path = Path(path)
    if not path.is_file():
        raise CMAAMError(f"{path}: unlabeled input file not found")
    if limit is not None and limit < 1:
        raise CMAAMError(f"--adapt-limit must be at least 1, got {limit}")
    if path.suffix == ".txt":
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise CMAAMError(f"{path}: no prompts")
        lines = lines[:limit] if limit else lines
        return [UnlabeledInput(f"line-{i + 1}", GenerationRequest(text=line)) for i, line in enumerate(lines)]
    records = read_jsonl(path)
    if "question" in records[0][1]:
        items = load_vqa_jsonl(path, limit=limit, labelled=False)
        requests = vqa_requests(items)
        return [UnlabeledInput(item.id, GenerationRequest(request.text, load_image(request.image)
                                                          if request.image is not None else None), item.lang)
                for item, request in zip(items, requests)]
    inputs = []
    for number, record in records[:limit] if limit else records:
        text = next((record[key] for key in PROMPT_FIELDS if isinstance(record.get(key), str) and record[key].strip()),
                    None)
        if text is None:
            raise CMAAMError(f"{path}:{number}: expected a 'question' (VQA), 'prompt' or 'text' field")
        inputs.append(UnlabeledInput(str(record.get("id", f"line-{number}")), GenerationRequest(text=text),
                                     str(record.get("lang", "en"))))
    return inputs


def parameter_groups(names: Sequence[str], layout: Layout, strategy: str) -> dict[str, str]:
    """The alpha-plan group of each model parameter name (either naming convention the layouts accept)."""
    group_key = get_strategy(strategy).group_key
    return {name: group_key(layout.classify(name)) for name in names}


@dataclass
class MergeSpace:
    """The target model (its weights are T), the task vectors of the changed parameters and their groups.

    ``groups`` lists the plan's groups in plan order; coefficient vectors are indexed like it.
    """

    model: Any
    processor: Any
    groups: list[str]
    task_vectors: dict[str, torch.Tensor]
    group_of: dict[str, int]
    base: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def changed_groups(self) -> list[str]:
        """Groups holding at least one changed parameter (the others are no-ops at any coefficient)."""
        return [self.groups[index] for index in sorted(set(self.group_of.values()))]

    def merged_parameters(self, coefficients: torch.Tensor) -> dict[str, torch.Tensor]:
        """T + alpha_g * tau for every changed parameter (differentiable in ``coefficients``)."""
        return {name: self.base[name] + coefficients[self.group_of[name]] * tau
                for name, tau in self.task_vectors.items()}

    def forward(self, coefficients: torch.Tensor, inputs: dict) -> torch.Tensor:
        """Logits of the merged model, evaluated functionally (no weights written)."""
        from torch.func import functional_call

        return functional_call(self.model, self.merged_parameters(coefficients), args=(), kwargs=dict(inputs)).logits

    @torch.no_grad()
    def load(self, coefficients: Sequence[float]) -> None:
        """Write the merge at ``coefficients`` into the model's own weights (for ``generate``)."""
        values = torch.as_tensor(list(coefficients), dtype=torch.float64)
        parameters = dict(self.model.named_parameters())
        for name, tau in self.task_vectors.items():
            parameters[name].copy_(self.base[name] + float(values[self.group_of[name]]) * tau)

    def generator(self, batch_size: int, max_new_tokens: int):
        """An HF generator over the in-memory model (eval.generation)."""
        from eval.generation import HFGenerator

        return HFGenerator.from_model(self.model, self.processor, batch_size=batch_size,
                                      max_new_tokens=max_new_tokens, progress=False)


def _model_class(config: dict):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from eval.generation import is_vision_config

    return AutoModelForImageTextToText if is_vision_config(config) else AutoModelForCausalLM


def load_merge_space(source: str | Path | TensorNames, target: str | Path | TensorNames, plan: AlphaPlan,
                     layout: Layout, device: str = "cpu", dtype: torch.dtype = torch.float32,
                     trust_remote_code: bool = False, allow_pickle: bool = False) -> MergeSpace:
    """Load T (the model) and take tau = S - T from ``source``, grouped like ``plan``; fails on an unknown group.

    ``source`` and ``target`` are model or adapter folders, or readers: the source view the merge reads (for
    models of different types, ``cmaam.alignment.mapping.mapped_source``: the source under the target's names,
    vocabulary rows aligned; for an adapter, W + scale * B @ A). Source tensors are read one at a time by the
    target's checkpoint name; target tensors the source has no counterpart for (a VLM's vision tower under a
    text-LLM source) get no task vector.
    """
    from cmaam.io.adapters import AdapterReader, apply_adapter, open_model
    from cmaam.io.names import NameIndex
    from cmaam.io.processors import load_processor
    from eval.loading import load_errors, load_pretrained_strict

    source_reader = open_model(source, allow_pickle) if isinstance(source, (str, Path)) else source
    target_reader = open_model(target, allow_pickle) if isinstance(target, (str, Path)) else target
    path = target_reader.reference_folder
    model_class = _model_class(target_reader.config)
    options = dict(progress=False, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    model = load_pretrained_strict(model_class, path, **options).to(device).eval()
    if isinstance(target_reader, AdapterReader):
        apply_adapter(model, target_reader)
    with load_errors(path, "the tokenizer or processor"):
        if model_class.__name__ == "AutoModelForImageTextToText":
            processor = load_processor(path, trust_remote_code=trust_remote_code)
        else:
            from transformers import AutoTokenizer

            processor = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    # transformers renames checkpoint keys on load (Qwen2-VL: model.layers.N -> model.language_model.layers.N)
    checkpoint = NameIndex(target_reader.keys())
    stored = {}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(False)
        if not parameter.is_floating_point():
            continue
        found = checkpoint.find(name)
        if found is None:
            raise CMAAMError(f"{path}: model parameter {name!r} has no tensor in the checkpoint")
        if found in source_reader:  # target-only tensors keep tau = 0
            stored[name] = found
    group_names = parameter_groups(list(stored.values()), layout, plan.config.strategy)
    groups = list(plan.groups)
    index = {group: position for position, group in enumerate(groups)}
    unknown = sorted({group for group in group_names.values() if group not in index})
    if unknown:
        raise CMAAMError(f"model parameters fall in group(s) {', '.join(unknown)} that the alpha plan does not have")
    parameters = dict(model.named_parameters())
    task_vectors, base, group_of = {}, {}, {}
    for name, found in stored.items():
        parameter = parameters[name].detach()
        tensor = source_reader.get(found, device=device, dtype=parameter.dtype)
        if tensor.shape != parameter.shape:
            raise CMAAMError(f"{source_reader.path}: {found} has shape {tuple(tensor.shape)}, the target's is "
                             f"{tuple(parameter.shape)}")
        difference = tensor - parameter
        if torch.count_nonzero(difference):
            task_vectors[name] = difference
            base[name] = parameter.clone()
            group_of[name] = index[group_names[found]]
    if not task_vectors:
        raise CMAAMError(f"{source_reader.path} and {path} have identical weights: there is nothing to adapt")
    return MergeSpace(model, processor, groups, task_vectors, group_of, base)


def initial_coefficients(plan: AlphaPlan, space: MergeSpace, init: float | None) -> list[float]:
    """The start: the plan's group alphas, or the constant ``init`` for every group."""
    if init is not None:
        if not 0.0 <= init <= 1.0:
            raise CMAAMError(f"--adapt-init must be in [0, 1], got {init}")
        return [float(init)] * len(space.groups)
    return [plan.groups[group].alpha for group in space.groups]


def set_plan_alphas(plan: AlphaPlan, alphas: dict[str, float]) -> None:
    """Replace the plan's group alphas by adapted ones (groups not given keep theirs)."""
    for group, value in alphas.items():
        plan.groups[group].alpha = float(value)


def round_float(value: float) -> float:
    """8 significant digits, as the merge report writes floats."""
    return float(f"{value:.8g}")
