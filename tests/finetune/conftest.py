"""Fixtures of the fine-tuning tests: a small Korean VQA corpus with broken rows, synthetic VQA sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image


def _image(path: Path, colour: tuple[int, int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path.name


def _llava(image: str, *turns: tuple[str, str], **extra) -> dict:
    conversations = []
    for index, (question, answer) in enumerate(turns):
        prefix = "<image>\n" if index == 0 else ""
        conversations += [{"from": "human", "value": prefix + question}, {"from": "gpt", "value": answer}]
    return {"image": image, "conversations": conversations, **extra}


def build_corpus(root: Path) -> Path:
    """A corpus in both input formats with known broken rows (counts are spelled out in test_data_prep.py).

    general.jsonl (flat): 10 good rows, 1 missing image, 1 unreadable image       -> valid 10, broken 2
    document/part-1.json (LLaVA list): 1 two-turn record, 6 good, 1 missing image -> valid 8, broken 1
    math_problem_ko.jsonl (LLaVA JSONL): 5 good, 1 malformed line                 -> valid 5, broken 1
    notes.json: no category in its name                                          -> ignored
    The other six categories are absent.
    """
    source = root / "source"
    images = source / "images"
    for index in range(12):
        _image(images / f"{index:02d}.png", (index * 20, 100, 200 - index * 10))
    (images / "broken.png").write_bytes(b"this is not a png")
    general = [{"image": f"images/{i:02d}.png", "question": f"그림 {i}의 색은?", "answer": f"색 {i}"}
               for i in range(10)]
    general += [{"image": "images/missing.png", "question": "q", "answer": "a"},
                {"image": "images/broken.png", "question": "q", "answer": "a"}]
    (source / "general.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in general),
                                          encoding="utf-8")
    document = [_llava("../images/00.png", ("What is the title?", "Report"), ("And the year?", "2024"), id="doc-0")]
    document += [_llava(f"../images/{i:02d}.png", (f"문서 {i}의 제목은?", f"제목 {i}"), id=f"doc-{i}")
                 for i in range(1, 7)]
    document += [_llava("../images/gone.png", ("q", "a"), id="doc-7")]
    (source / "document").mkdir()
    (source / "document" / "part-1.json").write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    math_lines = [json.dumps(_llava(f"images/{i:02d}.png", (f"{i} + 1 = ?", str(i + 1))), ensure_ascii=False)
                  for i in range(5)]
    math_lines.insert(2, "{not json")
    (source / "math_problem_ko.jsonl").write_text("\n".join(math_lines) + "\n", encoding="utf-8")
    (source / "notes.json").write_text("[]", encoding="utf-8")
    return source


@pytest.fixture
def corpus(tmp_path) -> Path:
    return build_corpus(tmp_path)


@pytest.fixture(scope="session")
def synthetic_en(tmp_path_factory) -> Path:
    """240 English synthetic samples (seed 0)."""
    from finetune.synthetic_vqa import SyntheticConfig, generate

    return generate(SyntheticConfig(output=str(tmp_path_factory.mktemp("data") / "syn_en"), n=240, lang="en"),
                    progress=False)


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Training with ``threads=1`` sets torch's thread count; give the rest of the session its own back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
