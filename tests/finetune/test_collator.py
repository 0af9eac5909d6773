"""Training encoding: the prompt is what eval/generation renders, labels cover only the answer."""

from __future__ import annotations

import torch

from cmaam.io.processors import load_processor
from eval.generation import GenerationRequest, HFGenerator
from eval.vqa import load_vqa_jsonl, vqa_requests
from finetune.collator import IGNORE_INDEX, VQAChatEncoder, VQACollator, VQATrainDataset


def test_labels_cover_the_answer_and_end_of_turn_only(tiny_qwen2vl, synthetic_en):
    processor = load_processor(tiny_qwen2vl)
    items = load_vqa_jsonl(synthetic_en / "train.jsonl", limit=3)
    dataset = VQATrainDataset(items, VQAChatEncoder(processor))
    sample = dataset[0]
    answer_positions = sample["labels"] != IGNORE_INDEX
    assert processor.tokenizer.decode(sample["labels"][answer_positions]) == items[0].answer + "<|im_end|>\n"
    prompt = processor.tokenizer.decode(sample["input_ids"][~answer_positions])
    generator = HFGenerator.from_model(None, processor)  # only its prompt rendering is used here
    rendered = generator.render(vqa_requests(items[:1])[0])
    image_tokens = int((sample["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum())
    assert image_tokens == 4  # 56x56 pixels: 4x4 patches of 14, merged 2x2
    assert prompt == rendered.replace("<|image_pad|>", "<|image_pad|>" * image_tokens)
    assert sample["pixel_values"].shape[0] == int(sample["image_grid_thw"].prod())


def test_collator_pads_right_and_concatenates_images(tiny_qwen2vl, synthetic_en):
    processor = load_processor(tiny_qwen2vl)
    items = load_vqa_jsonl(synthetic_en / "train.jsonl", limit=4)
    samples = [VQATrainDataset(items, VQAChatEncoder(processor))[i] for i in range(4)]
    batch = VQACollator(processor.tokenizer.pad_token_id)(samples)
    lengths = [len(s["input_ids"]) for s in samples]
    assert batch["input_ids"].shape == batch["labels"].shape == (4, max(lengths))
    for row, length in enumerate(lengths):
        assert torch.equal(batch["input_ids"][row, :length], samples[row]["input_ids"])
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
        assert batch["attention_mask"][row].sum() == length
    assert batch["pixel_values"].shape[0] == sum(s["pixel_values"].shape[0] for s in samples)
    assert batch["image_grid_thw"].shape == (4, 3)


def test_text_only_request_encodes(tiny_qwen2vl):
    processor = load_processor(tiny_qwen2vl)
    sample = VQAChatEncoder(processor).encode(GenerationRequest(text="2+2?"), "4")
    assert "pixel_values" not in sample
    assert processor.tokenizer.decode(sample["labels"][sample["labels"] != IGNORE_INDEX]) == "4<|im_end|>\n"
