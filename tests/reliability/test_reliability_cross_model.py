"""Cross-model merging, peft adapters as inputs and ``python -m cmaam.extract_lora`` under bad input: one
``error:`` line, exit 2, inputs untouched, no output left."""

from __future__ import annotations

import json

from reliability.harness import Registry, python

CASES = Registry()
EXTRACT = "cmaam.extract_lora"


def extract(base, model, output, *extra):
    return python(EXTRACT, "--base", base, "--model", model, output, "--device", "cpu", "--no-progress", *extra)


def merge(source, target, output, *extra):
    return python("cmaam.merge", "--source", source, "--target", target, "--output", output, "--device", "cpu",
                  "--no-progress", *extra)


def adapter(ws, folder, **config_changes):
    """A LoRA adapter of the tiny Llama with adapter_config.json edited by ``config_changes``."""
    from cmaam.testing.tiny import build_tiny_adapter

    path = build_tiny_adapter(ws.llama, folder / "adapter", ["q_proj", "v_proj"], seed=1)
    config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    config.update(config_changes)
    (path / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    return path


@CASES.add("extract-lora-missing-model", EXTRACT, "--model folder does not exist")
def _(ws, folder):
    missing = folder / "no-such-model"
    return dict(command=extract(ws.llama, missing, folder / "out", "--rank", "4"), inputs=[ws.llama],
                outputs=[folder / "out"], fragments=[str(missing)])


@CASES.add("extract-lora-rank-zero", EXTRACT, "--rank 0")
def _(ws, folder):
    return dict(command=extract(ws.llama, ws.llama_ft, folder / "out", "--rank", "0"),
                inputs=[ws.llama, ws.llama_ft], outputs=[folder / "out"], fragments=["--rank"])


@CASES.add("extract-lora-two-architectures", EXTRACT, "base is a Llama, the fine-tune a Qwen2-VL")
def _(ws, folder):
    return dict(command=extract(ws.llama, ws.qwen_ft, folder / "out", "--rank", "4"),
                inputs=[ws.llama, ws.qwen_ft], outputs=[folder / "out"], fragments=["architecture"])


@CASES.add("extract-lora-equal-models", EXTRACT, "the fine-tune equals the base")
def _(ws, folder):
    return dict(command=extract(ws.llama, ws.llama, folder / "out", "--rank", "4"), inputs=[ws.llama],
                outputs=[folder / "out"], fragments=["nothing to extract"])


@CASES.add("extract-lora-bad-regex", EXTRACT, "--include '(' is not a regular expression")
def _(ws, folder):
    return dict(command=extract(ws.llama, ws.llama_ft, folder / "out", "--rank", "4", "--include", "("),
                inputs=[ws.llama, ws.llama_ft], outputs=[folder / "out"], fragments=["regex"])


@CASES.add("extract-lora-output-exists", EXTRACT, "the output folder exists, no --overwrite")
def _(ws, folder):
    output = folder / "out"
    output.mkdir()
    (output / "notes.txt").write_text("mine", encoding="utf-8")
    return dict(command=extract(ws.llama, ws.llama_ft, output, "--rank", "4"), inputs=[ws.llama, ws.llama_ft],
                outputs=[output], fragments=["exists"])


@CASES.add("merge-adapter-without-base", "cmaam.merge", "an adapter folder whose config names no base model")
def _(ws, folder):
    source = adapter(ws, folder, base_model_name_or_path=None)
    return dict(command=merge(source, ws.llama, folder / "out"), inputs=[source, ws.llama],
                outputs=[folder / "out"], fragments=["--adapter-base"])


@CASES.add("merge-dora-adapter", "cmaam.merge", "a DoRA adapter (use_dora)")
def _(ws, folder):
    source = adapter(ws, folder, use_dora=True)
    return dict(command=merge(source, ws.llama, folder / "out"), inputs=[source, ws.llama],
                outputs=[folder / "out"], fragments=["DoRA"])


@CASES.add("merge-map-file-missing", "cmaam.merge", "--map names a file that does not exist")
def _(ws, folder):
    missing = folder / "map.yaml"
    return dict(command=merge(ws.llama, ws.qwen, folder / "out", "--map", missing), inputs=[ws.llama, ws.qwen],
                outputs=[folder / "out"], fragments=["mapping file"])


@CASES.add("merge-map-file-bad-regex", "cmaam.merge", "--map rule with an invalid regular expression")
def _(ws, folder):
    rules = folder / "map.yaml"
    rules.write_text("rules:\n  - {target: '(', source: x}\n", encoding="utf-8")
    return dict(command=merge(ws.llama, ws.qwen, folder / "out", "--map", rules), inputs=[ws.llama, ws.qwen, rules],
                outputs=[folder / "out"], fragments=["regular expression"])


@CASES.add("merge-other-language-family", "cmaam.merge", "a Llama text model into a Qwen2-VL (Qwen2 LM)")
def _(ws, folder):
    return dict(command=merge(ws.llama, ws.qwen, folder / "out"), inputs=[ws.llama, ws.qwen],
                outputs=[folder / "out"], fragments=["one architecture"])


@CASES.add("sweep-adapter-base-missing", "cmaam.sweep", "--adapter-base names a folder that does not exist")
def _(ws, folder):
    source = adapter(ws, folder)
    missing = folder / "no-base"
    return dict(command=python("cmaam.sweep", "--source", source, "--target", ws.llama, "--alphas", "0.5",
                               "--output-dir", folder / "out", "--adapter-base", missing, "--no-progress"),
                inputs=[source, ws.llama], outputs=[folder / "out"], fragments=[str(missing)])


@CASES.add("mergekit-map-file-missing", "cmaam.mergekit", "--map names a file that does not exist")
def _(ws, folder):
    config = folder / "ties.yaml"
    config.write_text(f"merge_method: ties\nbase_model: {ws.qwen}\nmodels:\n  - model: {ws.llama}\n"
                      "    parameters: {weight: 1.0, density: 0.5}\n", encoding="utf-8")
    return dict(command=python("cmaam.mergekit", config, folder / "out", "--map", folder / "map.yaml",
                               "--no-progress"), inputs=[config, ws.llama, ws.qwen], outputs=[folder / "out"],
                fragments=["mapping file"])


results, test_cross_model_fault = CASES.tests()
