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


def faulty_source(method: str, fragment: str | tuple[str, ...], ws, folder):
    """The fine-tune with one fault (``ws.method``) as --source: the error line must name ``fragment``."""
    source = getattr(ws, method)(ws.qwen_ft, folder / "source")
    return dict(command=merge(source, ws.qwen, folder / "out"), inputs=[source, ws.qwen], outputs=[folder / "out"],
                fragments=[fragment])


# (case id, fault, Workspace method breaking the source, what the error line names)
CASES.add_rows(CLI, [
    ("merge-no-weights", "source folder holds config.json but no weights", "without_weights",
     ("weights", "safetensors")),
    ("merge-truncated-shard", "source model.safetensors cut in half", "truncated", "model.safetensors"),
    ("merge-nan-weights", "a NaN in a source tensor", "with_nan", "nan"),
    ("merge-shape-mismatch", "one source tensor has another shape", "reshaped", "shape"),
    ("merge-pickle-refused", "pickled source weights without --allow-pickle", "pickled", "pickle"),
], faulty_source)


def output_over_target(target_at: str, output_at: str, ws, folder):
    """A copy of the target at ``folder/target_at`` and --output ``folder/output_at`` overlapping it, --overwrite."""
    target, output = ws.copy(ws.qwen, folder / target_at), folder / output_at
    return dict(command=merge(ws.qwen_ft, target, output, "--overwrite"), inputs=[target, ws.qwen_ft],
                outputs=[output])


# (case id, fault, target folder, output folder): the output overlaps an input, refused before anything is written
CASES.add_rows(CLI, [
    ("merge-output-is-target", "--output equal to --target, with --overwrite", "target", "target"),
    ("merge-output-inside-target", "--output inside --target, with --overwrite", "target", "target/merged"),
    ("merge-output-contains-target", "--output is a folder holding --target, with --overwrite", "models/target",
     "models"),
], output_over_target)


@CASES.add("merge-bad-config-json", CLI, "target config.json is malformed JSON")
def _(ws, folder):
    target = ws.with_config(ws.qwen, folder / "target", '{"model_type": "qwen2_vl", ')
    return dict(command=merge(ws.qwen_ft, target, folder / "out"), inputs=[target, ws.qwen_ft],
                outputs=[folder / "out"], fragments=["config.json"])


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


@CASES.add("merge-output-exists", CLI, "--output already exists, no --overwrite")
def _(ws, folder):
    output = folder / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine", encoding="utf-8")
    return dict(command=merge(ws.qwen_ft, ws.qwen, output), inputs=[ws.qwen_ft, ws.qwen], outputs=[output],
                fragments=["exists"])


results, test_merge_fault = CASES.tests()
