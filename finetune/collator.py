"""Chat-template encoding of VQA samples with loss only on the answer, and batch padding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from cmaam.core.errors import CMAAMError
from eval.generation import GenerationRequest, chat_messages, load_image
from eval.vqa import VQAItem, vqa_requests

IGNORE_INDEX = -100


class VQAChatEncoder:
    """Encode a prompt (eval's ``GenerationRequest``) and its answer for training, with labels on the answer only.

    The prompt is rendered exactly as eval/generation renders it at test time; the answer turn's text is
    found by rendering the template with and without it, and only the answer and the template's
    end-of-turn marker get labels (everything before them gets ``-100``).
    """

    def __init__(self, processor, max_length: int | None = None):
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.max_length = max_length
        if not getattr(processor, "chat_template", None):
            raise CMAAMError("the processor has no chat template; save one with the model (chat_template.jinja)")

    def target_text(self, messages: list[dict], answer: str) -> tuple[str, str]:
        """(prompt text, answer text including the template's end-of-turn marker)."""
        prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        reply = {"role": "assistant", "content": [{"type": "text", "text": answer}]}
        full = self.processor.apply_chat_template([*messages, reply], tokenize=False)
        if not full.startswith(prompt) or not full[len(prompt):].startswith(answer):
            raise CMAAMError("the chat template does not render the answer right after the generation prompt; "
                             "loss masking needs a template of that usual form")
        return prompt, full[len(prompt):]

    def encode(self, request: GenerationRequest, answer: str, sample_id: str = "") -> dict[str, torch.Tensor]:
        """Model inputs of one sample (sequence tensors without the batch dimension) with ``labels``."""
        image = load_image(request.image) if request.image is not None else None
        prompt, target = self.target_text(chat_messages(request, vision=True), answer)
        inputs = (self.processor(text=[prompt], images=[image], return_tensors="pt") if image is not None
                  else self.processor(text=[prompt], return_tensors="pt"))
        prompt_ids = inputs["input_ids"][0]
        answer_ids = torch.tensor(self.tokenizer(target, add_special_tokens=False)["input_ids"], dtype=torch.long)
        if self.max_length is not None:
            room = self.max_length - len(prompt_ids)
            if room < 1:
                raise CMAAMError(f"sample {sample_id!r}: the prompt alone has {len(prompt_ids)} tokens, "
                                 f"more than --max-length {self.max_length}")
            answer_ids = answer_ids[:room]
        sample: dict[str, torch.Tensor] = {}
        length = len(prompt_ids)
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape == (1, length):
                extension = answer_ids if key == "input_ids" else torch.full_like(answer_ids, _fill_value(key))
                sample[key] = torch.cat([value[0], extension.to(value.dtype)])
            else:
                sample[key] = value
        sample["labels"] = torch.cat([torch.full((length,), IGNORE_INDEX, dtype=torch.long), answer_ids])
        return sample


def _fill_value(key: str) -> int:
    """Value of a per-token input for answer tokens (attention 1, token types of text 0)."""
    return 1 if key == "attention_mask" else 0


@dataclass
class VQACollator:
    """Pad per-token tensors on the right (labels with -100); concatenate image tensors along dim 0."""

    pad_token_id: int

    def __call__(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
        length = max(len(sample["input_ids"]) for sample in samples)
        batch: dict[str, Any] = {}
        for key in samples[0]:
            values = [sample[key] for sample in samples]
            if values[0].dim() == 1 and len(values[0]) == len(samples[0]["input_ids"]):
                fill = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX, "attention_mask": 0}.get(key, 0)
                batch[key] = torch.stack([
                    torch.cat([value, torch.full((length - len(value),), fill, dtype=value.dtype)]) for value in values
                ])
            else:
                batch[key] = torch.cat(values, dim=0)
        return batch


class VQATrainDataset(torch.utils.data.Dataset):
    """VQA items encoded on access, with the same prompt (question + short-answer instruction) as evaluation."""

    def __init__(self, items: Sequence[VQAItem], encoder: VQAChatEncoder):
        self.items = list(items)
        self.requests = vqa_requests(self.items)
        self.encoder = encoder

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.items[index]
        return self.encoder.encode(self.requests[index], item.answer, sample_id=item.id)
