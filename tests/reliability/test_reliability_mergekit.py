"""``python -m cmaam.mergekit CONFIG OUT`` under bad configs and bad models."""

from __future__ import annotations

from pathlib import Path

from reliability.harness import Registry, python

CLI = "cmaam.mergekit"
CASES = Registry()


def linear_yaml(first: Path, second: Path, extra: str = "") -> str:
    return (f"merge_method: linear\nmodels:\n  - model: {first}\n    parameters: {{weight: 0.5}}\n"
            f"  - model: {second}\n    parameters: {{weight: 0.5}}\ndtype: float32\n{extra}")


def config_file(folder: Path, text: str) -> Path:
    path = folder / "configs" / "merge.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def mergekit(config: Path, output: Path, *extra) -> list[str]:
    return python(CLI, config, output, "--no-progress", *extra)


@CASES.add("mergekit-missing-config", CLI, "the YAML config does not exist")
def _(ws, folder):
    config = folder / "configs" / "missing.yaml"
    return dict(command=mergekit(config, folder / "out"), outputs=[folder / "out"], fragments=["missing.yaml"])


@CASES.add("mergekit-malformed-yaml", CLI, "the YAML config is not valid YAML")
def _(ws, folder):
    config = config_file(folder, "merge_method: linear\nmodels:\n  - model: [unclosed\n")
    return dict(command=mergekit(config, folder / "out"), inputs=[config.parent], outputs=[folder / "out"],
                fragments=["yaml"])


def refused_config(yaml_text, fragments: list[str], ws, folder):
    """A config over the base and the fine-tune, ``yaml_text(base, model)``, that the merge must refuse."""
    config = config_file(folder, yaml_text(ws.llama, ws.llama_ft))
    return dict(command=mergekit(config, folder / "out"), inputs=[config.parent, ws.llama, ws.llama_ft],
                outputs=[folder / "out"], fragments=fragments)


# (case id, fault, the YAML text from (base, model), what the error line names)
CASES.add_rows(CLI, [
    ("mergekit-unknown-method", "merge_method: frobnicate",
     lambda base, model: linear_yaml(base, model).replace("linear", "frobnicate"), ["frobnicate"]),
    ("mergekit-density-above-one", "ties with density 1.5",
     lambda base, model: (f"merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {model}\n"
                          f"    parameters: {{weight: 1.0, density: 1.5}}\ndtype: float32\n"), ["density", "1.5"]),
    ("mergekit-negative-t", "slerp with t = -0.2",
     lambda base, model: (f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {model}\n"
                          f"parameters:\n  t: -0.2\ndtype: float32\n"), ["-0.2"]),
], refused_config)


@CASES.add("mergekit-missing-model", CLI, "a model path in the YAML does not exist")
def _(ws, folder):
    missing = folder / "models" / "gone"
    config = config_file(folder, linear_yaml(ws.llama, missing))
    return dict(command=mergekit(config, folder / "out"), inputs=[config.parent, ws.llama],
                outputs=[folder / "out"], fragments=["gone"])


def faulty_model(method: str, name: str, fragment: str, ws, folder):
    """Linear merge of the base with ``folder/models/name``, the fine-tune with one fault (``ws.method``)."""
    model = getattr(ws, method)(ws.llama_ft, folder / "models" / name)
    config = config_file(folder, linear_yaml(ws.llama, model))
    return dict(command=mergekit(config, folder / "out"), inputs=[config.parent, ws.llama, model],
                outputs=[folder / "out"], fragments=[fragment])


# (case id, fault, Workspace method breaking the second model, its folder name, what the error line names)
CASES.add_rows(CLI, [
    ("mergekit-missing-tensor", "one model lacks a tensor the others have", "without_tensor", "lacking", "down_proj"),
    ("mergekit-shape-mismatch", "one model's tensor has another shape", "reshaped", "reshaped", "shape"),
], faulty_model)


def output_over_source(output_at: str, ws, folder):
    """Linear merge with a copy of the fine-tune at ``folder/models/source``; the output ``folder/output_at``
    overlaps it (--overwrite)."""
    source, output = ws.copy(ws.llama_ft, folder / "models" / "source"), folder / output_at
    config = config_file(folder, linear_yaml(ws.llama, source))
    return dict(command=mergekit(config, output, "--overwrite"), inputs=[config.parent, ws.llama, source],
                outputs=[output])


# (case id, fault, output folder): the output overlaps a source model, refused before anything is written
CASES.add_rows(CLI, [
    ("mergekit-output-is-source", "output equal to a source model, with --overwrite", "models/source"),
    ("mergekit-output-inside-source", "output inside a source model, with --overwrite", "models/source/merged"),
    ("mergekit-output-contains-source", "output is the folder holding a source model, with --overwrite", "models"),
], output_over_source)


results, test_mergekit_fault = CASES.tests()
