"""``python -m cmaam.merge`` under bad input: one ``error:`` line, exit 2, inputs untouched, no output left."""

from __future__ import annotations

from reliability.harness import Registry, python

CLI = "cmaam.merge"
CASES = Registry()


def merge(source, target, output, *extra):
    return python(CLI, "--source", source, "--target", target, "--output", output, "--device", "cpu",
                  "--no-progress", *extra)


@CASES.add("merge-missing-source", CLI, "--source folder does not exist")
def _(ws, folder):
    missing = folder / "no-such-model"
    return dict(command=merge(missing, ws.qwen, folder / "out"), inputs=[ws.qwen], outputs=[folder / "out"],
                fragments=[str(missing)])


@CASES.add("merge-no-weights", CLI, "source folder holds config.json but no weights")
def _(ws, folder):
    source = ws.without_weights(ws.qwen_ft, folder / "source")
    return dict(command=merge(source, ws.qwen, folder / "out"), inputs=[source, ws.qwen], outputs=[folder / "out"],
                fragments=[("weights", "safetensors")])


@CASES.add("merge-bad-config-json", CLI, "target config.json is malformed JSON")
def _(ws, folder):
    target = ws.with_config(ws.qwen, folder / "target", '{"model_type": "qwen2_vl", ')
    return dict(command=merge(ws.qwen_ft, target, folder / "out"), inputs=[target, ws.qwen_ft],
                outputs=[folder / "out"], fragments=["config.json"])


@CASES.add("merge-truncated-shard", CLI, "source model.safetensors cut in half")
def _(ws, folder):
    source = ws.truncated(ws.qwen_ft, folder / "source")
    return dict(command=merge(source, ws.qwen, folder / "out"), inputs=[source, ws.qwen], outputs=[folder / "out"],
                fragments=["model.safetensors"])


@CASES.add("merge-nan-weights", CLI, "a NaN in a source tensor")
def _(ws, folder):
    source = ws.with_nan(ws.qwen_ft, folder / "source")
    return dict(command=merge(source, ws.qwen, folder / "out"), inputs=[source, ws.qwen], outputs=[folder / "out"],
                fragments=["nan"])


@CASES.add("merge-shape-mismatch", CLI, "one source tensor has another shape")
def _(ws, folder):
    source = ws.reshaped(ws.qwen_ft, folder / "source")
    return dict(command=merge(source, ws.qwen, folder / "out"), inputs=[source, ws.qwen], outputs=[folder / "out"],
                fragments=["shape"])


@CASES.add("merge-unknown-model-type", CLI, "config.json names an unknown model_type")
def _(ws, folder):
    source = ws.with_model_type(ws.qwen_ft, folder / "source", "mystery_vlm")
    target = ws.with_model_type(ws.qwen, folder / "target", "mystery_vlm")
    return dict(command=merge(source, target, folder / "out"), inputs=[source, target], outputs=[folder / "out"],
                fragments=["mystery_vlm"])


@CASES.add("merge-alpha-out-of-range", CLI, "--base-alpha 1.5 (alpha outside [0, 1])")
def _(ws, folder):
    return dict(command=merge(ws.qwen_ft, ws.qwen, folder / "out", "--base-alpha", "1.5"),
                inputs=[ws.qwen_ft, ws.qwen], outputs=[folder / "out"], fragments=["alpha"])


@CASES.add("merge-pickle-refused", CLI, "pickled source weights without --allow-pickle")
def _(ws, folder):
    source = ws.pickled(ws.qwen_ft, folder / "source")
    return dict(command=merge(source, ws.qwen, folder / "out"), inputs=[source, ws.qwen], outputs=[folder / "out"],
                fragments=["pickle"])


@CASES.add("merge-malicious-pickle-refused", CLI, "a code-running pickle, no --allow-pickle")
def _(ws, folder):
    marker = folder / "PAYLOAD-RAN"
    source = ws.malicious(ws.qwen_ft, folder / "source", marker)
    return dict(command=merge(source, ws.qwen, folder / "out"), inputs=[source, ws.qwen], outputs=[folder / "out"],
                absent=[marker], fragments=["pickle"])


@CASES.add("merge-malicious-pickle-allowed", CLI, "a code-running pickle WITH --allow-pickle (weights_only)")
def _(ws, folder):
    marker = folder / "PAYLOAD-RAN"
    source = ws.malicious(ws.qwen_ft, folder / "source", marker)
    return dict(command=merge(source, ws.qwen, folder / "out", "--allow-pickle"), inputs=[source, ws.qwen],
                outputs=[folder / "out"], absent=[marker], fragments=["pytorch_model.bin"])


@CASES.add("merge-index-outside-folder", CLI, "index.json weight_map points to ../outside.safetensors")
def _(ws, folder):
    box = folder / "box"
    ws.copy(ws.qwen_ft / "model.safetensors", box / "outside.safetensors")
    names = ws.tensor_names(ws.qwen_ft)
    source = ws.indexed(ws.qwen_ft, box / "source", dict.fromkeys(names, "../outside.safetensors"))
    return dict(command=merge(source, ws.qwen, folder / "out"), inputs=[box, ws.qwen], outputs=[folder / "out"],
                fragments=["outside.safetensors"])


@CASES.add("merge-index-points-to-bin", CLI, "index.json weight_map points to a .bin pickle")
def _(ws, folder):
    pickled = ws.pickled(ws.qwen_ft, folder / "pickled")
    names = ws.tensor_names(ws.qwen_ft)
    source = ws.indexed(pickled, folder / "source", dict.fromkeys(names, "pytorch_model.bin"))
    return dict(command=merge(source, ws.qwen, folder / "out"), inputs=[source, ws.qwen], outputs=[folder / "out"],
                fragments=["pytorch_model.bin"])


@CASES.add("merge-index-non-string", CLI, "index.json weight_map holds a number instead of a file name")
def _(ws, folder):
    names = ws.tensor_names(ws.qwen_ft)
    weight_map = dict.fromkeys(names, "model.safetensors")
    weight_map[names[0]] = 7
    source = ws.indexed(ws.qwen_ft, folder / "source", weight_map, keep_weights=True)
    return dict(command=merge(source, ws.qwen, folder / "out"), inputs=[source, ws.qwen], outputs=[folder / "out"],
                fragments=["index"])


@CASES.add("merge-output-is-target", CLI, "--output equal to --target, with --overwrite")
def _(ws, folder):
    target = ws.copy(ws.qwen, folder / "target")
    return dict(command=merge(ws.qwen_ft, target, target, "--overwrite"), inputs=[target, ws.qwen_ft],
                outputs=[target])


@CASES.add("merge-output-inside-target", CLI, "--output inside --target, with --overwrite")
def _(ws, folder):
    target = ws.copy(ws.qwen, folder / "target")
    return dict(command=merge(ws.qwen_ft, target, target / "merged", "--overwrite"), inputs=[target, ws.qwen_ft],
                outputs=[target / "merged"])


@CASES.add("merge-output-contains-target", CLI, "--output is a folder holding --target, with --overwrite")
def _(ws, folder):
    target = ws.copy(ws.qwen, folder / "models" / "target")
    return dict(command=merge(ws.qwen_ft, target, folder / "models", "--overwrite"), inputs=[target, ws.qwen_ft],
                outputs=[folder / "models"])


@CASES.add("merge-output-exists", CLI, "--output already exists, no --overwrite")
def _(ws, folder):
    output = folder / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine", encoding="utf-8")
    return dict(command=merge(ws.qwen_ft, ws.qwen, output), inputs=[ws.qwen_ft, ws.qwen], outputs=[output],
                fragments=["exists"])


results, test_merge_fault = CASES.tests()
