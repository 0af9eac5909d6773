"""``python -m cmaam.evolve`` and the experiment pipeline (``scripts/run_experiment.sh``) under bad configs."""

from __future__ import annotations

from pathlib import Path

import yaml

from cmaam.core.presets import preset_path
from reliability.harness import Registry, python, script

EVOLVE = "cmaam.evolve"
EXPERIMENT = "cmaam.experiment"
CASES = Registry()


def evolve_config(folder: Path, ws, **changes) -> Path:
    """The tiny preset pointing at the suite's models, with ``changes`` applied (dotted keys for sections)."""
    data = yaml.safe_load(preset_path("evolve", "tiny").read_text(encoding="utf-8"))
    data["models"] = [{"name": "language", "path": str(ws.llama)}, {"name": "math", "path": str(ws.llama_ft)}]
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        (data[section] if section else data)[name] = value
    path = folder / "configs" / "evolve.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def evolve(config: Path, run: Path, *extra) -> list[str]:
    return python(EVOLVE, "--config", config, "--output-dir", run, "--wandb-mode", "disabled", "--no-progress", *extra)


@CASES.add("evolve-missing-config", EVOLVE, "--config names no file and no preset")
def _(ws, folder):
    return dict(command=evolve(folder / "nope.yaml", folder / "run"), outputs=[folder / "run"], fragments=["nope"])


@CASES.add("evolve-malformed-yaml", EVOLVE, "the evolve YAML is not valid YAML")
def _(ws, folder):
    config = folder / "configs" / "evolve.yaml"
    config.parent.mkdir()
    config.write_text("name: broken\nmodels: [{name: a, path: x\n", encoding="utf-8")
    return dict(command=evolve(config, folder / "run"), inputs=[config.parent], outputs=[folder / "run"],
                fragments=["yaml"])


@CASES.add("evolve-generations-not-a-number", EVOLVE, "generations: many")
def _(ws, folder):
    config = evolve_config(folder, ws, generations="many")
    return dict(command=evolve(config, folder / "run"), inputs=[config.parent, ws.llama, ws.llama_ft],
                outputs=[folder / "run"], fragments=["generations"])


@CASES.add("evolve-negative-sigma", EVOLVE, "genome.sigma: -0.1")
def _(ws, folder):
    config = evolve_config(folder, ws, genome__sigma=-0.1)
    return dict(command=evolve(config, folder / "run"), inputs=[config.parent, ws.llama, ws.llama_ft],
                outputs=[folder / "run"], fragments=["sigma"])


@CASES.add("evolve-population-one", EVOLVE, "population: 1")
def _(ws, folder):
    config = evolve_config(folder, ws, population=1)
    return dict(command=evolve(config, folder / "run"), inputs=[config.parent, ws.llama, ws.llama_ft],
                outputs=[folder / "run"], fragments=["population"])


@CASES.add("evolve-resume-missing-run", EVOLVE, "--resume of a run folder that does not exist")
def _(ws, folder):
    config = evolve_config(folder, ws)
    return dict(command=evolve(config, folder / "run", "--resume"), inputs=[config.parent, ws.llama, ws.llama_ft],
                outputs=[folder / "run"], fragments=["resume"])


def experiment(*args) -> list[str]:
    return script("scripts/run_experiment.sh", *args)


@CASES.add("experiment-malformed-yaml", EXPERIMENT, "--config is not valid YAML")
def _(ws, folder):
    config = folder / "configs" / "experiment.yaml"
    config.parent.mkdir()
    config.write_text("name: x\ndata: {synthetic_samples: 20\n", encoding="utf-8")
    return dict(command=experiment("demo", "--config", config, "--set", f"output_dir={folder / 'exp'}"),
                inputs=[config.parent], outputs=[folder / "exp"], fragments=["yaml"])


@CASES.add("experiment-set-malformed-value", EXPERIMENT, "--set data.synthetic_samples=[ (not YAML)")
def _(ws, folder):
    return dict(command=experiment("demo", "--set", f"output_dir={folder / 'exp'}",
                                   "--set", "data.synthetic_samples=["),
                outputs=[folder / "exp"], fragments=["data.synthetic_samples"])


@CASES.add("experiment-set-without-equals", EXPERIMENT, "--set output_dir (no KEY=VALUE)")
def _(ws, folder):
    return dict(command=python(EXPERIMENT, "demo", "--set", "output_dir"), cwd=folder, outputs=[folder / "experiments"],
                fragments=["output_dir"])


@CASES.add("experiment-set-unknown-key", EXPERIMENT, "--set data.colour=red (no such key)")
def _(ws, folder):
    return dict(command=experiment("demo", "--set", f"output_dir={folder / 'exp'}", "--set", "data.colour=red"),
                outputs=[folder / "exp"], fragments=["colour"])


@CASES.add("experiment-alpha-out-of-range", EXPERIMENT, "--set merge.base_alpha=2")
def _(ws, folder):
    return dict(command=experiment("demo", "--set", f"output_dir={folder / 'exp'}", "--set", "merge.base_alpha=2"),
                outputs=[folder / "exp"], fragments=["alpha"])


@CASES.add("experiment-steps-without-compare", EXPERIMENT, "--steps prepare (no compare step): must succeed")
def _(ws, folder):
    return dict(command=experiment("demo", "--steps", "prepare", "--set", f"output_dir={folder / 'exp'}",
                                   "--set", "data.synthetic_samples=20", "--set", "data.image_size=28"),
                outputs=[folder / "exp"], expect=0,
                produced=[folder / "exp" / "data" / name / "test.jsonl" for name in ("synthetic_ko", "synthetic_en")])


results, test_pipeline_fault = CASES.tests()
