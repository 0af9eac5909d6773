"""Fixtures for the evaluator tests: a small VQA data set with real PNG images."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def vqa_folder(tmp_path):
    """A VQA data set folder: images/ (two 32x32 PNGs) and test.jsonl with three questions (en, ko, text-only)."""
    from PIL import Image

    images = tmp_path / "vqa" / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (32, 32), (255, 0, 0)).save(images / "red.png")
    Image.new("RGB", (32, 32), (0, 0, 255)).save(images / "blue.png")
    records = [
        {"id": "q1", "image": "images/red.png", "question": "What color is the square?", "answer": "red",
         "answers": ["red"] * 9 + ["crimson"], "category": "color", "lang": "en"},
        {"id": "q2", "image": "images/blue.png", "question": "이 사각형은 무슨 색입니까?", "answer": "파란색",
         "category": "색상", "lang": "ko"},
        {"id": "q3", "image": None, "question": "How many sides does a square have?", "answer": "4",
         "category": "count", "lang": "en"},
    ]
    path = tmp_path / "vqa" / "test.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path
