"""The experiment pipeline: prepare data -> fine-tune -> CMAAM merges -> linear baselines -> evaluate -> compare.

Each step runs the project's own CLI in a subprocess, logs to EXPERIMENT/logs/<step>.log, and is
skipped when its output is already complete (outputs are written atomically, so "exists" means
"finished"): rerunning an interrupted experiment resumes it. ``scripts/run_experiment.sh`` is a thin
wrapper over ``python -m cmaam.experiment``.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from cmaam.core.errors import CMAAMError
from cmaam.core.presets import preset_path
from cmaam.reproducible import launcher_arguments

PRESETS = ("demo", "tiny", "quick", "full")
STRATEGIES = ("basic", "layerwise", "component", "full")


@dataclass
class DataConfig:
    """Korean training/test data and the English retention set."""

    korean_source: str | None = None  # a Korean VQA corpus folder (prepare_korean_vqa_data); None = synthetic
    korean_mode: str = "tiny"  # tiny | quick | full (prepare_korean_vqa_data --mode)
    english: str | None = None  # a VQA folder (test.jsonl) for English retention; None = synthetic
    synthetic_samples: int = 600  # per language, when synthetic
    image_size: int = 56


@dataclass
class BaseModelConfig:
    """The model merged into: a path or hub id, or (None) a tiny VLM built and trained on English here."""

    path: str | None = None
    model_type: str = "qwen2_vl"
    hidden_size: int = 64
    num_hidden_layers: int = 2
    vision_hidden_size: int = 32
    vision_layers: int = 2
    train_args: list[str] = field(default_factory=lambda: ["--epochs", "3", "--batch-size", "8", "--grad-accum", "1",
                                                           "--lr", "3e-3"])


@dataclass
class FinetuneConfig:
    """Arguments of ``python -m finetune.lora_vqa`` for the Korean LoRA fine-tune."""

    args: list[str] = field(default_factory=lambda: ["--epochs", "3", "--batch-size", "8", "--grad-accum", "1",
                                                     "--lora-rank", "16", "--lora-alpha", "32", "--lr", "2e-3"])


@dataclass
class MergeConfig:
    """CMAAM strategies and the linear baselines."""

    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    base_alpha: float = 0.5
    args: list[str] = field(default_factory=list)  # extra flags for python -m cmaam.merge
    baseline_alphas: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])


@dataclass
class EvalConfig:
    """Evaluation of every model on the Korean test split and the English retention set."""

    limit: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 16
    device: str = "auto"


@dataclass
class ExperimentConfig:
    """One experiment: where it lives, its data, models, merges and evaluation."""

    name: str = "demo"
    output_dir: str = "experiments/demo"
    seed: int = 0
    threads: int | None = None  # torch threads (intra- and inter-op) in every step; None = torch's default
    deterministic: bool = True  # deterministic torch kernels in every step (cmaam.reproducible)
    wandb_mode: str = "offline"
    wandb_project: str = "cmaam"
    data: DataConfig = field(default_factory=DataConfig)
    base_model: BaseModelConfig = field(default_factory=BaseModelConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)


def _build(cls, values: Any, where: str):
    if not isinstance(values, dict):
        raise CMAAMError(f"{where}: expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise CMAAMError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING \
            else fields[name].default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value or {}, f"{where}.{name}")
        elif isinstance(default, list) and value is not None and not isinstance(value, list):
            raise CMAAMError(f"{where}.{name}: expected a list, got {value!r}")
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _set(values: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise CMAAMError(f"--set {assignment!r}: expected KEY=VALUE (e.g. data.korean_source=/data/ko)")
    key, raw = assignment.split("=", 1)
    node = values
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise CMAAMError(f"--set {key}: {part} is not a section")
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise CMAAMError(f"--set {key}: {raw!r} is not a valid YAML value ({str(error).splitlines()[0]})") from None


def load_experiment_config(preset: str | None = None, path: str | Path | None = None,
                           overrides: Sequence[str] = ()) -> ExperimentConfig:
    """A preset (cmaam/configs/experiments/<preset>.yaml) or a YAML file, with KEY=VALUE overrides, validated."""
    if path is None:
        if preset not in PRESETS:
            raise CMAAMError(f"unknown preset {preset!r} (choose {', '.join(PRESETS)})")
        path = preset_path("experiments", preset)
    from cmaam.io.files import read_yaml

    path = Path(path)
    values = read_yaml(path, "no such experiment config") or {}
    for assignment in overrides:
        _set(values, assignment)
    config = _build(ExperimentConfig, values, path.name)
    bad = [s for s in config.merge.strategies if s not in STRATEGIES]
    if bad:
        raise CMAAMError(f"{path.name}: unknown strategies {bad} (choose {', '.join(STRATEGIES)})")
    if not 0 <= config.merge.base_alpha <= 1 or any(not 0 <= a <= 1 for a in config.merge.baseline_alphas):
        raise CMAAMError(f"{path.name}: alphas must lie in [0, 1]")
    if config.data.korean_mode not in ("tiny", "quick", "full"):
        raise CMAAMError(f"{path.name}: data.korean_mode must be tiny, quick or full")
    if config.threads is not None and (not isinstance(config.threads, int) or config.threads < 1):
        raise CMAAMError(f"{path.name}: threads must be a whole number of at least 1 (or null for torch's default)")
    if not isinstance(config.deterministic, bool):
        raise CMAAMError(f"{path.name}: deterministic must be true or false")
    if config.wandb_mode not in ("offline", "online", "disabled"):
        raise CMAAMError(f"{path.name}: wandb_mode must be offline, online or disabled")
    return config


class Pipeline:
    """Runs the steps of one experiment; every path lives under ``config.output_dir``."""

    def __init__(self, config: ExperimentConfig, python: str = sys.executable, echo: bool = True):
        self.config = config
        self.root = Path(config.output_dir)
        self.python = python
        self.echo = echo
        self.ran: list[str] = []  # steps (or items) actually executed, in order
        self.skipped: list[str] = []

    # -- paths -------------------------------------------------------------------------------
    @property
    def korean_data(self) -> Path:
        return self.root / "data" / ("korean_vqa" if self.config.data.korean_source else "synthetic_ko")

    @property
    def english_data(self) -> Path:
        return Path(self.config.data.english) if self.config.data.english else self.root / "data" / "synthetic_en"

    @property
    def base_model(self) -> Path:
        if self.config.base_model.path:
            from cmaam.io.locate import local_model_path

            return local_model_path(self.config.base_model.path, "base model")
        return self.root / "models" / "base" / "merged"

    @property
    def finetuned_model(self) -> Path:
        return self.root / "models" / "finetuned" / "merged"

    def models(self) -> list[tuple[str, str, Path | str]]:
        """(name, role, path) of every model the experiment evaluates."""
        models = [("base", "base", self.base_model), ("finetuned", "finetuned", self.finetuned_model)]
        models += [(f"cmaam_{s}", "cmaam", self.root / "models" / f"cmaam_{s}") for s in self.config.merge.strategies]
        models += [(f"linear_{a:g}", "baseline", self.root / "models" / "linear" / f"alpha_{a:g}")
                   for a in self.config.merge.baseline_alphas]
        return models

    # -- running -----------------------------------------------------------------------------
    def _say(self, message: str) -> None:
        if self.echo:
            print(message, flush=True)

    def _run(self, step: str, label: str, arguments: Sequence[str | Path]) -> None:
        """Run one command, appending its output to logs/<step>.log; a failure stops the pipeline.

        Every command runs under ``cmaam.reproducible``: the experiment's seed, thread count and
        deterministic kernels, the same in every step.
        """
        config = self.config
        command = [self.python, *launcher_arguments(config.seed, config.threads, config.deterministic),
                   *map(str, arguments)]
        log = self.root / "logs" / f"{step}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        self._say(f"[{step}] {label} ...")
        environment = dict(os.environ, WANDB_MODE=self.config.wandb_mode, PYTHONUNBUFFERED="1",
                           TOKENIZERS_PARALLELISM="false", HF_HUB_DISABLE_PROGRESS_BARS="1")
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"\n$ {shlex.join(command)}\n")
            handle.flush()
            code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT, env=environment)
        if code != 0:
            tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-1:] or [""]
            raise CMAAMError(f"step {step} ({label}) failed with exit code {code}: {tail[0].strip()} "
                             f"(full log: {log})")
        self.ran.append(f"{step}:{label}")
        self._say(f"[{step}] {label} done in {time.time() - started:.0f}s")

    def _skip(self, step: str, label: str) -> None:
        self.skipped.append(f"{step}:{label}")
        self._say(f"[{step}] {label}: already complete, skipped")

    def _item(self, step: str, label: str, done: bool, arguments: Sequence[str | Path]) -> None:
        if done:
            self._skip(step, label)
        else:
            self._run(step, label, arguments)

    # -- steps -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Korean data (corpus or synthetic) and the English retention set."""
        data, seed = self.config.data, str(self.config.seed)
        if data.korean_source:
            self._item("prepare", "Korean VQA corpus", (self.korean_data / "test.jsonl").exists(),
                       ["-m", "finetune.data_prep", "--source", data.korean_source,
                        "--output", self.korean_data, "--mode", data.korean_mode, "--seed", seed])
        else:
            self._item("prepare", "synthetic Korean VQA", (self.korean_data / "test.jsonl").exists(),
                       ["-m", "finetune.synthetic_vqa", "--output", self.korean_data, "--lang", "ko",
                        "--n", str(data.synthetic_samples), "--seed", seed, "--image-size", str(data.image_size)])
        if data.english:
            if not (self.english_data / "test.jsonl").exists():
                raise CMAAMError(f"{self.english_data}: no test.jsonl for the English retention set")
        else:
            self._item("prepare", "synthetic English VQA", (self.english_data / "test.jsonl").exists(),
                       ["-m", "finetune.synthetic_vqa", "--output", self.english_data, "--lang", "en",
                        "--n", str(data.synthetic_samples), "--seed", str(self.config.seed + 1),
                        "--image-size", str(data.image_size)])

    def _train_arguments(self, model: Path | str, data: Path, output: Path, extra: Sequence[str], run: str) -> list:
        done_before = output.exists()
        return ["-m", "finetune.lora_vqa", "--model", model, "--data", data, "--output", output,
                "--seed", str(self.config.seed), "--results-root", self.root / "results" / "training",
                "--run-name", run, "--wandb-mode", self.config.wandb_mode, "--wandb-project",
                self.config.wandb_project, "--no-progress", "--eval-limit", "0",
                *(["--resume"] if done_before else []), *extra]

    def base(self) -> None:
        """Demo only: build a tiny random VLM and train it fully on the English synthetic set."""
        if self.config.base_model.path:
            return
        base = self.config.base_model
        initial = self.root / "models" / "initial"
        self._item("base", "build tiny VLM", initial.exists(),
                   ["-m", "cmaam.tiny", "--output", initial, "--model-type", base.model_type, "--seed",
                    str(self.config.seed), "--hidden-size", str(base.hidden_size), "--num-hidden-layers",
                    str(base.num_hidden_layers), "--vision-hidden-size", str(base.vision_hidden_size),
                    "--vision-layers", str(base.vision_layers)])
        self._item("base", "train base on English", Path(self.base_model).exists(),
                   self._train_arguments(initial, self.english_data, self.root / "models" / "base",
                                         ["--full-finetune", "--train-vision", *base.train_args], "base-training"))

    def finetune(self) -> None:
        """LoRA fine-tune of the base on the Korean training split."""
        self._item("finetune", "LoRA on Korean", self.finetuned_model.exists(),
                   self._train_arguments(self.base_model, self.korean_data, self.root / "models" / "finetuned",
                                         self.config.finetune.args, "finetuned-training"))

    def merge(self) -> None:
        """One CMAAM merge per strategy (with --analyze)."""
        for strategy in self.config.merge.strategies:
            output = self.root / "models" / f"cmaam_{strategy}"
            self._item("merge", f"CMAAM {strategy}", output.exists(),
                       ["-m", "cmaam.merge", "--source", self.finetuned_model, "--target", self.base_model,
                        "--output", output, "--strategy", strategy, "--base-alpha",
                        str(self.config.merge.base_alpha), "--analyze", "--no-progress", *self.config.merge.args])

    def baselines(self) -> None:
        """Linear merges at the configured alphas (one sweep, inputs read once)."""
        folder = self.root / "models" / "linear"
        missing = [a for a in self.config.merge.baseline_alphas if not (folder / f"alpha_{a:g}").exists()]
        label = "linear " + "/".join(f"{a:g}" for a in self.config.merge.baseline_alphas)
        self._item("baselines", label, not missing,
                   ["-m", "cmaam.sweep", "--source", self.finetuned_model, "--target", self.base_model,
                    "--alphas", ",".join(f"{a:g}" for a in missing), "--output-dir", folder, "--no-progress"])

    def evaluate(self) -> None:
        """Every model on the Korean test split and the English retention set."""
        evaluation = self.config.evaluation
        for name, role, path in self.models():
            done = (self.root / "results" / name / "metrics.json").exists()
            arguments = ["-m", "cmaam.experiment", "evaluate-model", "--model", path, "--name", name, "--role", role,
                         "--korean", self.korean_data / "test.jsonl", "--english", self.english_data / "test.jsonl",
                         "--results-root", self.root / "results", "--batch-size", str(evaluation.batch_size),
                         "--max-new-tokens", str(evaluation.max_new_tokens), "--device", evaluation.device,
                         "--wandb-mode", self.config.wandb_mode, "--wandb-project", self.config.wandb_project,
                         "--group", self.config.name]
            if evaluation.limit:
                arguments += ["--limit", str(evaluation.limit)]
            self._item("evaluate", name, done, arguments)

    def compare(self) -> None:
        """The comparison table (Markdown, CSV) and plot of every evaluated model."""
        self._run("compare", "comparison table", ["-m", "cmaam.compare", self.root / "results",
                                                  "--output", self.root / "comparison"])

    STEPS = ("prepare", "base", "finetune", "merge", "baselines", "evaluate", "compare")

    def inputs(self) -> list[str | Path]:
        """What the experiment reads from outside its folder: the Korean corpus, the English set, the base model."""
        data, base = self.config.data, self.config.base_model.path
        return [data.korean_source, data.english, self.base_model if base else None]

    def run(self, steps: Sequence[str] | None = None) -> Path:
        """Run the steps in order (all by default); returns the comparison folder.

        The experiment folder is locked for the whole run and may not overlap its inputs.
        """
        from cmaam.io.atomic import atomic_write_yaml, claim_output

        started = time.time()
        unknown = [step for step in steps or () if step not in self.STEPS]
        if unknown:
            raise CMAAMError(f"unknown step {unknown[0]!r} (steps: {', '.join(self.STEPS)})")
        with claim_output(self.root, inputs=self.inputs(), overwrite=None):
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_yaml(self.root / "experiment.yaml", dataclasses.asdict(self.config))
            for step in steps or self.STEPS:
                getattr(self, step)()
        table = self.root / "comparison" / "comparison.md"
        self._say(f"experiment {self.config.name} finished in {time.time() - started:.0f}s"
                  + (f"; table: {table}" if table.exists() else ""))
        return self.root / "comparison"


def evaluate_model(model: str | Path, name: str, role: str, korean: str | Path, english: str | Path,
                   results_root: str | Path, limit: int | None = None, batch_size: int = 16,
                   max_new_tokens: int = 16, device: str = "auto", wandb_mode: str = "offline",
                   wandb_project: str = "cmaam", group: str | None = None) -> dict[str, float]:
    """Evaluate one model on both sets into results_root/<name>/ (metrics prefixed 'ko/' and 'en/')."""
    from cmaam.io.tracking import start_run
    from eval.generation import load_generator
    from eval.vqa import evaluate_vqa, load_vqa_jsonl

    sets = {"ko": load_vqa_jsonl(korean, limit=limit), "en": load_vqa_jsonl(english, limit=limit)}
    generator = load_generator(str(model), backend="hf", device=device, batch_size=batch_size,
                               max_new_tokens=max_new_tokens)
    config = {"model": str(model), "model_name": name, "role": role, "korean": str(korean),
              "english": str(english), "limit": limit, "max_new_tokens": max_new_tokens}
    metrics: dict[str, float] = {}
    # metrics.json is written last (atomically): its presence marks a finished evaluation.
    with start_run(name, config, root=results_root, wandb_mode=wandb_mode, project=wandb_project,
                   group=group, inputs=[model, korean, english]) as run:
        for prefix, items in sets.items():
            result = evaluate_vqa(generator, items, max_new_tokens=max_new_tokens)
            metrics.update({f"{prefix}/{key}": value for key, value in result.metrics.items()})
            run.save_samples(result.samples, f"samples_{prefix}")
        run.log_summary(metrics)
    return metrics
