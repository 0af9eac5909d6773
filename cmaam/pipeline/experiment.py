"""The experiment pipeline: prepare data -> fine-tune -> CMAAM merges -> linear baselines -> evaluate -> compare.

Every step calls the library in this process with typed settings (``finetune.synthetic_vqa.generate``,
``cmaam.testing.tiny.write_tiny_model``, ``finetune.lora_vqa.train``, ``merge_vlm``, ``sweep``,
``evaluate_model``, ``compare_runs``). Before each step the process is set up as ``cmaam.core.reproducible``
describes (the config's seed, torch threads, deterministic kernels), so every step computes with the same
settings. A step writes its log to EXPERIMENT/logs/<step>.log (its logging records, and its stdout and stderr
at the file-descriptor level) and is skipped when its output is already complete (outputs are written
atomically, so "exists" means "finished"): rerunning an interrupted experiment resumes it.
``scripts/run_experiment.sh`` is a thin wrapper over ``python -m cmaam.experiment``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from cmaam.alignment.alphas.strategies import STRATEGIES
from cmaam.core.config import (
    InvalidValue,
    at_least,
    between,
    each,
    load_config,
    one_of,
    setting,
)
from cmaam.core.errors import CMAAMError, first_line
from cmaam.core.options import ExecutionOptions
from cmaam.core.presets import preset_path
from finetune.lora_vqa import TrainingSettings

logger = logging.getLogger(__name__)
PRESETS = ("demo", "tiny", "quick", "full")
KOREAN_MODES = ("tiny", "quick", "full")  # finetune.data_prep's --mode sizes: 10K, 100K, everything
WANDB_MODES = ("offline", "online", "disabled")
INTERPOLATIONS = ("linear", "slerp")
# Environment of every step: no tokenizer thread pools, no hub progress bars.
STEP_ENVIRONMENT = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


@dataclass
class DataConfig:
    """Korean training/test data and the English retention set."""

    korean_source: str | None = None  # a Korean VQA corpus folder (finetune.data_prep); None = synthetic
    korean_mode: str = setting("tiny", check=one_of(KOREAN_MODES))  # tiny 10K | quick 100K | full
    english: str | None = None  # a VQA folder (test.jsonl) for English retention; None = synthetic
    synthetic_samples: int = setting(600, check=at_least(1))  # per language, when synthetic
    image_size: int = setting(56, check=at_least(28))


@dataclass
class BaseModelConfig:
    """The model merged into: a path or hub id, or (None) a tiny VLM built here and trained fully on English."""

    path: str | None = None
    model_type: str = "qwen2_vl"
    hidden_size: int = setting(64, check=at_least(1))
    num_hidden_layers: int = setting(2, check=at_least(1))
    vision_hidden_size: int = setting(32, check=at_least(1))
    vision_layers: int = setting(2, check=at_least(1))
    # How the tiny base is trained (always every weight, vision included: full_finetune and train_vision).
    training: TrainingSettings = field(default_factory=lambda: TrainingSettings(
        epochs=3.0, batch_size=8, grad_accum=1, lr=3e-3))


@dataclass
class MergeStepConfig:
    """The CMAAM merges (one per strategy, same alpha settings) and the linear baselines."""

    strategies: list[str] = setting(default_factory=lambda: list(STRATEGIES), check=one_of(STRATEGIES))
    base_alpha: float = setting(0.5, check=between(0, 1))
    alpha_min: float = setting(0.0, check=between(0, 1))
    alpha_max: float = setting(1.0, check=between(0, 1))
    score_weights: dict[str, float] | None = None  # e.g. {pda: 0.4, gfs: 0.3, cmbc: 0.3} (the default)
    preserve_mean: bool = False  # rescale so the mean alpha is base_alpha
    use_sensitivity: bool = True  # false: the v_g = 0 ablation
    interp: str = setting("linear", check=one_of(INTERPOLATIONS))
    model_type: str | None = None  # layout (default: config.json's model_type)
    rules_file: str | None = None  # YAML component rules for an architecture without a built-in layout
    baseline_alphas: list[float] = setting(default_factory=lambda: [0.3, 0.5, 0.7], check=each(between(0, 1)))

    def alphas(self, strategy: str):
        """The ``AlphaConfig`` of one strategy's merge."""
        from cmaam.alignment.alphas import AlphaConfig, parse_score_weights

        return AlphaConfig(strategy=strategy, base_alpha=self.base_alpha, alpha_min=self.alpha_min,
                           alpha_max=self.alpha_max, score_weights=parse_score_weights(self.score_weights),
                           preserve_mean=self.preserve_mean, use_sensitivity=self.use_sensitivity)

    def validate(self) -> None:
        if self.alpha_min > self.alpha_max:
            raise InvalidValue("alpha_min", f"{self.alpha_min} is above alpha_max {self.alpha_max}")
        from cmaam.alignment.alphas import parse_score_weights

        try:
            parse_score_weights(self.score_weights)
        except CMAAMError as error:
            raise InvalidValue("score_weights", str(error)) from None


@dataclass
class EvalConfig:
    """Evaluation of every model on the Korean test split and the English retention set."""

    limit: int | None = setting(None, check=at_least(1))
    batch_size: int = setting(16, check=at_least(1))
    max_new_tokens: int = setting(16, check=at_least(1))


@dataclass
class ExperimentConfig:
    """One experiment: where it lives, its data, models, merges and evaluation (loaded by ``cmaam.core.config``)."""

    name: str = "demo"
    output_dir: str = "experiments/demo"
    seed: int = setting(0, check=at_least(0))
    threads: int | None = setting(None, check=at_least(1))  # torch threads in every step; None = torch's default
    deterministic: bool = True  # deterministic torch kernels in every step (cmaam.core.reproducible)
    device: str = "auto"  # of the merges and the evaluations (training uses the GPU when there is one)
    wandb_mode: str = setting("offline", check=one_of(WANDB_MODES))
    wandb_project: str = "cmaam"
    data: DataConfig = field(default_factory=DataConfig)
    base_model: BaseModelConfig = field(default_factory=BaseModelConfig)
    # The Korean LoRA fine-tune.
    finetune: TrainingSettings = field(default_factory=lambda: TrainingSettings(
        epochs=3.0, batch_size=8, grad_accum=1, lora_rank=16, lora_alpha=32, lr=2e-3))
    merge: MergeStepConfig = field(default_factory=MergeStepConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)

    @property
    def options(self) -> ExecutionOptions:
        """The execution options of every step: the device and seed; progress bars off (steps write logs)."""
        return ExecutionOptions(device=self.device, seed=self.seed, progress=False)

    def validate(self) -> None:
        try:
            self.options.validate()
        except CMAAMError as error:
            raise InvalidValue("device", str(error)) from None


def experiment_preset(preset: str) -> Path:
    """The shipped preset cmaam/configs/experiments/<preset>.yaml."""
    if preset not in PRESETS:
        raise CMAAMError(f"unknown preset {preset!r} (choose {', '.join(PRESETS)})")
    return preset_path("experiments", preset)


def load_experiment_config(preset: str | None = None, path: str | Path | None = None,
                           overrides: Sequence[str] = ()) -> ExperimentConfig:
    """A preset (cmaam/configs/experiments/<preset>.yaml) or a YAML file, with KEY=VALUE overrides, validated."""
    return load_config(ExperimentConfig, experiment_preset(preset) if path is None else path, overrides)


def plain(config: Any) -> Any:
    """A config as plain data (lists, not tuples) for YAML."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


@contextlib.contextmanager
def step_output(log: Path) -> Iterator[None]:
    """Send everything a step writes to ``log`` (appended): logging records (INFO and up, through a FileHandler
    that replaces the root logger's handlers for the step), and stdout and stderr at the file-descriptor level
    (C libraries and handlers that hold ``sys.stderr`` included)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    sys.stdout.flush()
    sys.stderr.flush()
    with open(log, "a", encoding="utf-8") as file:
        handler = logging.StreamHandler(file)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        saved = {fd: os.dup(fd) for fd in (1, 2)}
        streams = sys.stdout, sys.stderr
        try:
            for fd in (1, 2):
                os.dup2(file.fileno(), fd)
            # Python-level writers of the two descriptors (the test runner may have replaced sys.stdout).
            sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), encoding="utf-8", line_buffering=True)
            sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), encoding="utf-8", line_buffering=True)
            for existing in handlers:
                root.removeHandler(existing)
            root.addHandler(handler)
            root.setLevel(logging.INFO)
            yield
        finally:
            root.removeHandler(handler)
            for existing in handlers:
                root.addHandler(existing)
            root.setLevel(level)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            sys.stdout, sys.stderr = streams
            file.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)


class Pipeline:
    """Runs the steps of one experiment; every path lives under ``config.output_dir``."""

    STEPS = ("prepare", "base", "finetune", "merge", "baselines", "evaluate", "compare")

    def __init__(self, config: ExperimentConfig, echo: bool = True):
        self.config = config
        self.root = Path(config.output_dir)
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

    def models(self) -> list[tuple[str, str, Path]]:
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

    def _run(self, step: str, label: str, work: Callable[[], Any]) -> None:
        """Run one item of a step in this process, its output appended to logs/<step>.log; a failure stops the
        pipeline with one line naming the step and its log.

        Every item starts as ``cmaam.core.reproducible.configure`` leaves a process: the experiment's seed,
        thread count and deterministic kernels, the same in every step.
        """
        from cmaam.core.reproducible import configure

        config = self.config
        log = self.root / "logs" / f"{step}.log"
        started = time.time()
        self._say(f"[{step}] {label} ...")
        failure = None
        with step_output(log):
            logger.info("== %s: %s (seed %s, threads %s, deterministic %s)", step, label, config.seed,
                        config.threads or "default", config.deterministic)
            configure(config.seed, config.threads, config.deterministic)
            try:
                work()
            except Exception as error:  # noqa: BLE001 - every failure of a step is reported with its log
                logger.error("step %s (%s) failed", step, label, exc_info=not isinstance(error, CMAAMError))
                logger.error("error: %s", first_line(error))
                failure = error
        if failure is not None:
            raise CMAAMError(f"step {step} ({label}) failed: {first_line(failure)} (full log: {log})") from failure
        self.ran.append(f"{step}:{label}")
        self._say(f"[{step}] {label} done in {time.time() - started:.0f}s")

    def _skip(self, step: str, label: str) -> None:
        self.skipped.append(f"{step}:{label}")
        self._say(f"[{step}] {label}: already complete, skipped")

    def _item(self, step: str, label: str, done: bool, work: Callable[[], Any]) -> None:
        if done:
            self._skip(step, label)
        else:
            self._run(step, label, work)

    # -- steps -------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Korean data (corpus or synthetic) and the English retention set."""
        from finetune.data_prep import PrepConfig, prepare
        from finetune.synthetic_vqa import SyntheticConfig, generate

        data, seed = self.config.data, self.config.seed
        if data.korean_source:
            self._item("prepare", "Korean VQA corpus", (self.korean_data / "test.jsonl").exists(),
                       lambda: prepare(PrepConfig(source=data.korean_source, output=str(self.korean_data),
                                                  mode=data.korean_mode, seed=seed), progress=False))
        else:
            self._item("prepare", "synthetic Korean VQA", (self.korean_data / "test.jsonl").exists(),
                       lambda: generate(SyntheticConfig(output=str(self.korean_data), n=data.synthetic_samples,
                                                        lang="ko", seed=seed, image_size=data.image_size),
                                        progress=False))
        if data.english:
            if not (self.english_data / "test.jsonl").exists():
                raise CMAAMError(f"{self.english_data}: no test.jsonl for the English retention set")
        else:
            self._item("prepare", "synthetic English VQA", (self.english_data / "test.jsonl").exists(),
                       lambda: generate(SyntheticConfig(output=str(self.english_data), n=data.synthetic_samples,
                                                        lang="en", seed=seed + 1, image_size=data.image_size),
                                        progress=False))

    def _train(self, settings: TrainingSettings, model: Path, data: Path, output: Path, run: str):
        """Train with ``settings``: resumed from its checkpoints when ``output`` exists (an interrupted run)."""
        from finetune.lora_vqa import LoraTrainConfig, train

        config = LoraTrainConfig.from_settings(
            settings, model=str(model), data=str(data), output=str(output), seed=self.config.seed,
            results_root=str(self.root / "results" / "training"), run_name=run, wandb_mode=self.config.wandb_mode,
            wandb_project=self.config.wandb_project, progress=False, eval_limit=0, resume=output.exists())
        return lambda: train(config)

    def base(self) -> None:
        """Demo only: build a tiny random VLM and train it fully on the English synthetic set."""
        if self.config.base_model.path:
            return
        from cmaam.testing.tiny import TinySize, write_tiny_model

        base = self.config.base_model
        initial = self.root / "models" / "initial"
        size = TinySize(hidden_size=base.hidden_size, intermediate_size=2 * base.hidden_size,
                        num_hidden_layers=base.num_hidden_layers, vision_hidden_size=base.vision_hidden_size,
                        vision_layers=base.vision_layers)
        self._item("base", "build tiny VLM", initial.exists(),
                   lambda: write_tiny_model(initial, base.model_type, self.config.seed, size))
        training = dataclasses.replace(base.training, full_finetune=True, train_vision=True)
        self._item("base", "train base on English", Path(self.base_model).exists(),
                   self._train(training, initial, self.english_data, self.root / "models" / "base", "base-training"))

    def finetune(self) -> None:
        """LoRA fine-tune of the base on the Korean training split."""
        self._item("finetune", "LoRA on Korean", self.finetuned_model.exists(),
                   self._train(self.config.finetune, self.base_model, self.korean_data,
                               self.root / "models" / "finetuned", "finetuned-training"))

    def merge(self) -> None:
        """One CMAAM merge per strategy, with its analysis."""
        from cmaam.alignment.merge import merge_vlm

        merge = self.config.merge
        for strategy in merge.strategies:
            output = self.root / "models" / f"cmaam_{strategy}"
            self._item("merge", f"CMAAM {strategy}", output.exists(),
                       lambda strategy=strategy, output=output: merge_vlm(
                           self.finetuned_model, self.base_model, output, merge.alphas(strategy), self.config.options,
                           interp=merge.interp, model_type=merge.model_type, rules_file=merge.rules_file,
                           analyze=True))

    def baselines(self) -> None:
        """Linear merges at the configured alphas (one sweep, inputs read once)."""
        from cmaam.merging.sweep import sweep, sweep_output

        folder = self.root / "models" / "linear"
        missing = [a for a in self.config.merge.baseline_alphas if not sweep_output(folder, a).exists()]
        label = "linear " + "/".join(f"{a:g}" for a in self.config.merge.baseline_alphas)
        self._item("baselines", label, not missing,
                   lambda: sweep(self.finetuned_model, self.base_model, folder, missing, self.config.options))

    def evaluate(self) -> None:
        """Every model on the Korean test split and the English retention set."""
        evaluation = self.config.evaluation
        for name, role, path in self.models():
            done = (self.root / "results" / name / "metrics.json").exists()
            self._item("evaluate", name, done, lambda name=name, role=role, path=path: evaluate_model(
                path, name, role, self.korean_data / "test.jsonl", self.english_data / "test.jsonl",
                self.root / "results", limit=evaluation.limit, batch_size=evaluation.batch_size,
                max_new_tokens=evaluation.max_new_tokens, device=self.config.device,
                wandb_mode=self.config.wandb_mode, wandb_project=self.config.wandb_project, group=self.config.name))

    def compare(self) -> None:
        """The comparison table (Markdown, CSV) and plot of every evaluated model."""
        from cmaam.pipeline.compare import compare_runs, to_markdown

        def work() -> None:
            comparison, _ = compare_runs([self.root / "results"], self.root / "comparison")
            print(to_markdown(comparison))

        self._run("compare", "comparison table", work)

    def inputs(self) -> list[str | Path | None]:
        """What the experiment reads from outside its folder: the Korean corpus, the English set, the base model."""
        data, base = self.config.data, self.config.base_model.path
        return [data.korean_source, data.english, self.base_model if base else None]

    def run(self, steps: Sequence[str] | None = None) -> Path:
        """Run the steps in order (all by default); returns the comparison folder.

        The experiment folder is locked for the whole run and may not overlap its inputs. The process's torch
        settings and environment are put back at the end (``cmaam.core.reproducible.preserved``).
        """
        from cmaam.core.reproducible import preserved
        from cmaam.io.atomic import atomic_write_yaml, claim_output

        started = time.time()
        unknown = [step for step in steps or () if step not in self.STEPS]
        if unknown:
            raise CMAAMError(f"unknown step {unknown[0]!r} (steps: {', '.join(self.STEPS)})")
        environment = {**STEP_ENVIRONMENT, "WANDB_MODE": self.config.wandb_mode}
        with preserved(environment), claim_output(self.root, inputs=self.inputs(), overwrite=None):
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_yaml(self.root / "experiment.yaml", plain(self.config))
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
