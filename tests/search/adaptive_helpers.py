"""Helpers of the adaptive-merge tests."""

from __future__ import annotations

import json


def vqa_file(folder, count=6, lang="en"):
    """A tiny unlabeled VQA JSONL with rendered images."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    rows = []
    for index in range(count):
        Image.new("RGB", (56, 56), (40 * index, 200 - 30 * index, 90)).save(folder / "images" / f"{index}.png")
        rows.append({"id": f"q{index}", "image": f"images/{index}.png", "question": "What colour is the image?",
                     "lang": lang})
    path = folder / "questions.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
