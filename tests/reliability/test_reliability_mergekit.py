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


@CASES.add("mergekit-unknown-method", CLI, "merge_method: frobnicate")
def _(ws, folder):
    config = config_file(folder, linear_yaml(ws.llama, ws.llama_ft).replace("linear", "frobnicate"))
    return dict(command=mergekit(config, folder / "out"), inputs=[config.parent, ws.llama, ws.llama_ft],
                outputs=[folder / "out"], fragments=["frobnicate"])


@CASES.add("mergekit-density-above-one", CLI, "ties with density 1.5")
def _(ws, folder):
    text = (f"merge_method: ties\nbase_model: {ws.llama}\nmodels:\n  - model: {ws.llama_ft}\n"
            f"    parameters: {{weight: 1.0, density: 1.5}}\ndtype: float32\n")
    config = config_file(folder, text)
    return dict(command=mergekit(config, folder / "out"), inputs=[config.parent, ws.llama, ws.llama_ft],
                outputs=[folder / "out"], fragments=["density", "1.5"])


@CASES.add("mergekit-negative-t", CLI, "slerp with t = -0.2")
def _(ws, folder):
    text = (f"merge_method: slerp\nbase_model: {ws.llama}\nmodels:\n  - model: {ws.llama}\n  - model: {ws.llama_ft}\n"
            f"parameters:\n  t: -0.2\ndtype: float32\n")
    config = config_file(folder, text)
    return dict(command=mergekit(config, folder / "out"), inputs=[config.parent, ws.llama, ws.llama_ft],
                outputs=[folder / "out"], fragments=["-0.2"])


@CASES.add("mergekit-missing-model", CLI, "a model path in the YAML does not exist")
def _(ws, folder):
    missing = folder / "models" / "gone"
    config = config_file(folder, linear_yaml(ws.llama, missing))
    return dict(command=mergekit(config, folder / "out"), inputs=[config.parent, ws.llama],
                outputs=[folder / "out"], fragments=["gone"])


@CASES.add("mergekit-missing-tensor", CLI, "one model lacks a tensor the others have")
def _(ws, folder):
    lacking = ws.without_tensor(ws.llama_ft, folder / "models" / "lacking")
    config = config_file(folder, linear_yaml(ws.llama, lacking))
    return dict(command=mergekit(config, folder / "out"), inputs=[config.parent, ws.llama, lacking],
                outputs=[folder / "out"], fragments=["down_proj"])


@CASES.add("mergekit-shape-mismatch", CLI, "one model's tensor has another shape")
def _(ws, folder):
    reshaped = ws.reshaped(ws.llama_ft, folder / "models" / "reshaped")
    config = config_file(folder, linear_yaml(ws.llama, reshaped))
    return dict(command=mergekit(config, folder / "out"), inputs=[config.parent, ws.llama, reshaped],
                outputs=[folder / "out"], fragments=["shape"])


@CASES.add("mergekit-output-is-source", CLI, "output equal to a source model, with --overwrite")
def _(ws, folder):
    source = ws.copy(ws.llama_ft, folder / "models" / "source")
    config = config_file(folder, linear_yaml(ws.llama, source))
    return dict(command=mergekit(config, source, "--overwrite"), inputs=[config.parent, ws.llama, source],
                outputs=[source])


@CASES.add("mergekit-output-inside-source", CLI, "output inside a source model, with --overwrite")
def _(ws, folder):
    source = ws.copy(ws.llama_ft, folder / "models" / "source")
    config = config_file(folder, linear_yaml(ws.llama, source))
    return dict(command=mergekit(config, source / "merged", "--overwrite"), inputs=[config.parent, ws.llama, source],
                outputs=[source / "merged"])


@CASES.add("mergekit-output-contains-source", CLI, "output is the folder holding a source model, with --overwrite")
def _(ws, folder):
    source = ws.copy(ws.llama_ft, folder / "models" / "source")
    config = config_file(folder, linear_yaml(ws.llama, source))
    return dict(command=mergekit(config, folder / "models", "--overwrite"), inputs=[config.parent, ws.llama, source],
                outputs=[folder / "models"])


results, test_mergekit_fault = CASES.tests()
