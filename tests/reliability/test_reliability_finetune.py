"""The data and fine-tuning CLIs (synthetic_vqa, lora_vqa, data_prep / scripts/prepare_korean_vqa_data.py)."""

from __future__ import annotations

from reliability.harness import Registry, python, script

SYNTHETIC = "finetune.synthetic_vqa"
LORA = "finetune.lora_vqa"
PREP = "finetune.data_prep"
CASES = Registry()


@CASES.add("synthetic-bad-fraction", SYNTHETIC, "--val-fraction 1.5")
def _(ws, folder):
    return dict(command=python(SYNTHETIC, "--output", folder / "data", "--n", "20", "--val-fraction", "1.5"),
                outputs=[folder / "data"], fragments=["fraction"])


@CASES.add("synthetic-zero-samples", SYNTHETIC, "--n 0")
def _(ws, folder):
    return dict(command=python(SYNTHETIC, "--output", folder / "data", "--n", "0"), outputs=[folder / "data"],
                fragments=["--n"])


def lora(model, data, output, folder, *extra):
    return python(LORA, "--model", model, "--data", data, "--output", output, "--results-root", folder / "tracking",
                  "--wandb-mode", "disabled", "--no-progress", "--max-steps", "1", "--eval-limit", "0",
                  "--batch-size", "2", "--threads", "1", *extra)


@CASES.add("lora-missing-data", LORA, "--data folder does not exist")
def _(ws, folder):
    return dict(command=lora(ws.qwen, folder / "data", folder / "out", folder), inputs=[ws.qwen],
                outputs=[folder / "out", folder / "tracking"], fragments=["data"])


@CASES.add("lora-bad-dropout", LORA, "--lora-dropout 1.5")
def _(ws, folder):
    return dict(command=lora(ws.qwen, ws.vqa_data, folder / "out", folder, "--lora-dropout", "1.5"),
                inputs=[ws.qwen, ws.vqa_data], outputs=[folder / "out", folder / "tracking"], fragments=["dropout"])


@CASES.add("lora-output-is-model", LORA, "--output equal to --model, with --overwrite")
def _(ws, folder):
    model = ws.copy(ws.qwen, folder / "model")
    return dict(command=lora(model, ws.vqa_data, model, folder, "--overwrite"), inputs=[model, ws.vqa_data],
                outputs=[model, folder / "tracking"])


def prepare(source, output, *extra):
    return python(PREP, "--source", source, "--output", output, "--mode", "full", *extra)


@CASES.add("dataprep-missing-source", PREP, "--source folder does not exist")
def _(ws, folder):
    return dict(command=prepare(folder / "corpus", folder / "prepared"), outputs=[folder / "prepared"],
                fragments=["corpus"])


@CASES.add("dataprep-malformed-json", PREP, "a category .json file is malformed JSON")
def _(ws, folder):
    corpus = ws.copy(ws.corpus, folder / "corpus")
    (corpus / "document.json").write_text('[{"image": "images/00.png", ', encoding="utf-8")
    return dict(command=prepare(corpus, folder / "prepared"), inputs=[corpus], outputs=[folder / "prepared"],
                fragments=["document.json"])


@CASES.add("dataprep-output-is-source", PREP, "--output equal to --source, with --overwrite")
def _(ws, folder):
    corpus = ws.copy(ws.corpus, folder / "corpus")
    return dict(command=prepare(corpus, corpus, "--overwrite"), inputs=[corpus], outputs=[corpus])


@CASES.add("dataprep-output-inside-source", PREP, "--output inside --source, with --overwrite")
def _(ws, folder):
    corpus = ws.copy(ws.corpus, folder / "corpus")
    return dict(command=prepare(corpus, corpus / "prepared", "--overwrite"), inputs=[corpus],
                outputs=[corpus / "prepared"])


@CASES.add("dataprep-output-contains-source", PREP, "--output is the folder holding --source, with --overwrite")
def _(ws, folder):
    corpus = ws.copy(ws.corpus, folder / "raw" / "corpus")
    return dict(command=prepare(corpus, folder / "raw", "--overwrite"), inputs=[corpus], outputs=[folder / "raw"])


@CASES.add("dataprep-script-missing-source", "scripts/prepare_korean_vqa_data.py", "--source folder does not exist")
def _(ws, folder):
    return dict(command=script("scripts/prepare_korean_vqa_data.py", "--source", folder / "corpus", "--output",
                               folder / "prepared"), outputs=[folder / "prepared"], fragments=["corpus"])


results, test_finetune_fault = CASES.tests()
