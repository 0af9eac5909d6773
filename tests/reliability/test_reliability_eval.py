"""``python -m eval.mgsm`` and ``python -m eval.vqa`` under broken models and data: no run folder is left."""

from __future__ import annotations

from reliability.conftest import write_jsonl
from reliability.harness import Registry, python

MGSM = "eval.mgsm"
VQA = "eval.vqa"
CASES = Registry()
GENERATION = ("--device", "cpu", "--backend", "hf", "--max-new-tokens", "4", "--batch-size", "2", "--wandb-mode",
              "disabled", "--no-progress")


def mgsm(model, folder, *extra):
    return python(MGSM, "--model", model, "--lang", "en", "--limit", "2", "--output-dir", folder / "results",
                  "--run-name", "run", *GENERATION, *extra)


def vqa(model, data, folder, *extra):
    return python(VQA, "--model", model, "--data", data, "--limit", "2", "--output-dir", folder / "results",
                  "--run-name", "run", *GENERATION, *extra)


@CASES.add("mgsm-corrupt-safetensors", MGSM, "model.safetensors is not a safetensors file")
def _(ws, folder):
    model = ws.corrupt(ws.llama, folder / "model")
    return dict(command=mgsm(model, folder), inputs=[model], outputs=[folder / "results" / "run"],
                fragments=["model"])


@CASES.add("mgsm-missing-tensor", MGSM, "the checkpoint lacks a tensor the architecture needs")
def _(ws, folder):
    model = ws.without_tensor(ws.llama, folder / "model")
    return dict(command=mgsm(model, folder), inputs=[model], outputs=[folder / "results" / "run"],
                fragments=["down_proj"])


@CASES.add("mgsm-unknown-language", MGSM, "--lang xx")
def _(ws, folder):
    command = python(MGSM, "--model", ws.llama, "--lang", "xx", "--output-dir", folder / "results", "--run-name",
                     "run", *GENERATION)
    return dict(command=command, inputs=[ws.llama], outputs=[folder / "results" / "run"], fragments=["xx"])


@CASES.add("vqa-corrupt-safetensors", VQA, "model.safetensors is not a safetensors file")
def _(ws, folder):
    model = ws.corrupt(ws.qwen, folder / "model")
    return dict(command=vqa(model, ws.vqa_data / "test.jsonl", folder), inputs=[model, ws.vqa_data],
                outputs=[folder / "results" / "run"], fragments=["model"])


@CASES.add("vqa-missing-tensor", VQA, "the checkpoint lacks a tensor the architecture needs")
def _(ws, folder):
    model = ws.without_tensor(ws.qwen, folder / "model")
    return dict(command=vqa(model, ws.vqa_data / "test.jsonl", folder), inputs=[model, ws.vqa_data],
                outputs=[folder / "results" / "run"], fragments=["down_proj"])


@CASES.add("vqa-missing-data", VQA, "--data JSONL does not exist")
def _(ws, folder):
    return dict(command=vqa(ws.qwen, folder / "data" / "test.jsonl", folder), inputs=[ws.qwen],
                outputs=[folder / "results" / "run"], fragments=["test.jsonl"])


@CASES.add("vqa-non-image-file", VQA, "a JSONL row's image is a text file named .png")
def _(ws, folder):
    data = folder / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "fake.png").write_text("this is not an image\n", encoding="utf-8")
    write_jsonl(data / "test.jsonl", [{"id": "q0", "image": "images/fake.png", "question": "What colour?",
                                       "answer": "red", "lang": "en"}])
    return dict(command=vqa(ws.qwen, data / "test.jsonl", folder), inputs=[ws.qwen, data],
                outputs=[folder / "results" / "run"], fragments=["fake.png"])


@CASES.add("vqa-text-only-model", VQA, "a text-only model asked image questions, without --text-only")
def _(ws, folder):
    return dict(command=vqa(ws.llama, ws.vqa_data / "test.jsonl", folder), inputs=[ws.llama, ws.vqa_data],
                outputs=[folder / "results" / "run"], fragments=["--text-only"])


results, test_eval_fault = CASES.tests()
