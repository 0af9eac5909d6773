"""``python -m cmaam.sweep`` and ``python -m cmaam.soups`` under bad input and outputs that overlap inputs."""

from __future__ import annotations

from reliability.harness import Registry, python

SWEEP = "cmaam.sweep"
SOUPS = "cmaam.soups"
CASES = Registry()


def sweep(source, target, output_dir, alphas="0.5", *extra):
    return python(SWEEP, "--source", source, "--target", target, "--output-dir", output_dir, "--alphas", alphas,
                  "--device", "cpu", "--no-progress", *extra)


def soup(output, *models_and_flags):
    return python(SOUPS, output, *models_and_flags)


@CASES.add("sweep-alpha-out-of-range", SWEEP, "--alphas 0.3,1.2 (alpha outside [0, 1])")
def _(ws, folder):
    return dict(command=sweep(ws.llama_ft, ws.llama, folder / "sweep", "0.3,1.2"), inputs=[ws.llama, ws.llama_ft],
                outputs=[folder / "sweep"], fragments=["1.2"])


@CASES.add("sweep-nan-weights", SWEEP, "a NaN in a source tensor (found while writing)")
def _(ws, folder):
    source = ws.with_nan(ws.llama_ft, folder / "source")
    return dict(command=sweep(source, ws.llama, folder / "sweep", "0.3,0.7"), inputs=[source, ws.llama],
                outputs=[folder / "sweep"], fragments=["nan"])


@CASES.add("sweep-output-is-target", SWEEP, "OUTPUT_DIR/alpha_0.5 is --target, with --overwrite")
def _(ws, folder):
    target = ws.copy(ws.llama, folder / "sweep" / "alpha_0.5")
    return dict(command=sweep(ws.llama_ft, target, folder / "sweep", "0.5", "--overwrite"),
                inputs=[target, ws.llama_ft], outputs=[target])


@CASES.add("sweep-output-inside-target", SWEEP, "--output-dir is --target (outputs inside it), with --overwrite")
def _(ws, folder):
    target = ws.copy(ws.llama, folder / "target")
    return dict(command=sweep(ws.llama_ft, target, target, "0.5", "--overwrite"), inputs=[target, ws.llama_ft],
                outputs=[target / "alpha_0.5"])


@CASES.add("sweep-output-contains-source", SWEEP, "OUTPUT_DIR/alpha_0.5 holds --source, with --overwrite")
def _(ws, folder):
    source = ws.copy(ws.llama_ft, folder / "sweep" / "alpha_0.5" / "source")
    return dict(command=sweep(source, ws.llama, folder / "sweep", "0.5", "--overwrite"), inputs=[source, ws.llama],
                outputs=[folder / "sweep" / "alpha_0.5"])


@CASES.add("soups-missing-model", SOUPS, "an ingredient folder does not exist")
def _(ws, folder):
    missing = folder / "gone"
    return dict(command=soup(folder / "soup", ws.llama, missing), inputs=[ws.llama], outputs=[folder / "soup"],
                fragments=["gone"])


@CASES.add("soups-shape-mismatch", SOUPS, "one ingredient's tensor has another shape")
def _(ws, folder):
    reshaped = ws.reshaped(ws.llama_ft, folder / "reshaped")
    return dict(command=soup(folder / "soup", ws.llama, reshaped), inputs=[ws.llama, reshaped],
                outputs=[folder / "soup"], fragments=["shape"])


@CASES.add("soups-bad-dtype", SOUPS, "--dtype float8")
def _(ws, folder):
    return dict(command=soup(folder / "soup", ws.llama, ws.llama_ft, "--dtype", "float8"),
                inputs=[ws.llama, ws.llama_ft], outputs=[folder / "soup"], fragments=["float8"])


@CASES.add("soups-output-is-ingredient", SOUPS, "OUT equal to an ingredient, with --overwrite")
def _(ws, folder):
    ingredient = ws.copy(ws.llama_ft, folder / "ft")
    return dict(command=soup(ingredient, ws.llama, ingredient, "--overwrite"), inputs=[ingredient, ws.llama],
                outputs=[ingredient])


@CASES.add("soups-output-inside-ingredient", SOUPS, "OUT inside an ingredient, with --overwrite")
def _(ws, folder):
    ingredient = ws.copy(ws.llama_ft, folder / "ft")
    return dict(command=soup(ingredient / "soup", ws.llama, ingredient, "--overwrite"), inputs=[ingredient, ws.llama],
                outputs=[ingredient / "soup"])


@CASES.add("soups-output-contains-ingredient", SOUPS, "OUT is the folder holding an ingredient, with --overwrite")
def _(ws, folder):
    ingredient = ws.copy(ws.llama_ft, folder / "models" / "ft")
    return dict(command=soup(folder / "models", ws.llama, ingredient, "--overwrite"), inputs=[ingredient, ws.llama],
                outputs=[folder / "models"])


results, test_sweep_and_soups_fault = CASES.tests()
