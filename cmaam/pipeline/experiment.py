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
from cmaam.pipeline.families import AdaptRun, ModelSpec, TaskVectorMethod
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
    # Synthetic English only: this share of its train questions is asked and answered in Korean, so the
    # base knows some Korean (the demo's world; 0 = an English-only base).
    english_korean_share: float = setting(0.0, check=between(0, 1))


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
    baseline_alphas: list[float] = setting(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 10)],
                                           check=each(between(0, 1)))  # the linear family (0: base, 1: fine-tune)
    # CMAAM with --preserve-mean at these mean alphas, one curve per strategy (basic would repeat linear)
    preserve_mean_alphas: list[float] = setting(default_factory=list, check=each(between(0, 1)))
    preserve_mean_strategies: list[str] = setting(default_factory=lambda: ["component", "layerwise", "full"],
                                                  check=one_of(STRATEGIES))
    # task-vector families through the mergekit runner (task_arithmetic, ties, dare_linear, ...)
    task_vector_methods: list[TaskVectorMethod] = field(default_factory=list)
    # label-free adaptive merges (AdaMerging, AdaMMS), from the CMAAM plan of their strategy at base_alpha
    adapt: list[AdaptRun] = field(default_factory=list)

    def alphas(self, strategy: str):
        """The ``AlphaConfig`` of one strategy's merge."""
        from cmaam.alignment.alphas import AlphaConfig, parse_score_weights

        return AlphaConfig(strategy=strategy, base_alpha=self.base_alpha, alpha_min=self.alpha_min,
                           alpha_max=self.alpha_max, score_weights=parse_score_weights(self.score_weights),
                           preserve_mean=self.preserve_mean, use_sensitivity=self.use_sensitivity)

    def validate(self) -> None:
        names = [method.name for method in self.task_vector_methods] + [run.name for run in self.adapt]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise InvalidValue("task_vector_methods", f"two families named {repeated[0]!r} (set family: to tell them "
                                                      "apart)")
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
    # Further fine-tunes of the same base on the same data (e.g. one that also trains the vision tower):
    # name -> settings. Each is merged, evaluated and compared like the first, under variants/<name>/.
    finetune_variants: dict[str, TrainingSettings] = field(default_factory=dict)
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
        bad = [name for name in self.finetune_variants if not name.replace("_", "").replace("-", "").isalnum()]
        if bad:
            raise InvalidValue("finetune_variants", f"{bad[0]!r}: a variant name is a folder name (letters, digits, "
                                                    "- and _)")


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


@dataclass
class Arm:
    """One fine-tune of the base and everything compared through it: its models, results and comparison.

    The first fine-tune (config ``finetune``) lives at the experiment's root, each of ``finetune_variants``
    under ``variants/<name>/``; the data and the base are shared.
    """

    name: str
    settings: TrainingSettings
    root: Path

    @property
    def finetuned_model(self) -> Path:
        return self.root / "models" / "finetuned" / "merged"

    @property
    def models_folder(self) -> Path:
        return self.root / "models"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def comparison(self) -> Path:
        return self.root / "comparison"

    def label(self, text: str) -> str:
        """A log label naming the arm when it is a variant."""
        return text if self.name == FIRST_ARM else f"{self.name}: {text}"


FIRST_ARM = "finetuned"


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
    def unlabeled(self) -> dict[str, Path]:
        """The unlabeled inputs of the adaptive merges: ``adapt`` (the val splits, answers dropped) and
        ``held_out`` (the test splits, never adapted on; AdaMerging reports their entropy)."""
        folder = self.root / "data" / "unlabeled"
        return {"adapt": folder / "val.jsonl", "held_out": folder / "test.jsonl"}

    @property
    def base_model(self) -> Path:
        if self.config.base_model.path:
            from cmaam.io.locate import local_model_path

            return local_model_path(self.config.base_model.path, "base model")
        return self.root / "models" / "base" / "merged"

    @property
    def finetuned_model(self) -> Path:
        return self.arms()[0].finetuned_model

    def arms(self) -> list[Arm]:
        """The first fine-tune, then each variant."""
        arms = [Arm(FIRST_ARM, self.config.finetune, self.root)]
        arms += [Arm(name, settings, self.root / "variants" / name)
                 for name, settings in self.config.finetune_variants.items()]
        return arms

    def models(self, arm: Arm | None = None) -> list[ModelSpec]:
        """Every model one arm evaluates (the first arm by default), family by family."""
        arm = arm or self.arms()[0]
        merge, folder = self.config.merge, arm.models_folder
        specs = [ModelSpec("base", "base", "base", self.base_model),
                 ModelSpec("finetuned", "finetuned", "finetuned", arm.finetuned_model)]
        specs += [ModelSpec(f"cmaam_{s}", "cmaam", "cmaam", folder / f"cmaam_{s}", "cmaam", merge.base_alpha,
                            {"strategy": s, "base_alpha": merge.base_alpha, "preserve_mean": merge.preserve_mean})
                  for s in merge.strategies]
        specs += [ModelSpec(f"cmaam_{s}_pm_{a:g}", "cmaam", f"cmaam_{s}_pm", folder / "preserve_mean" / f"{s}_{a:g}",
                            "preserve_mean", a, {"strategy": s, "base_alpha": a, "preserve_mean": True})
                  for s in merge.preserve_mean_strategies for a in merge.preserve_mean_alphas]
        specs += [ModelSpec(run.name, "cmaam", run.method, folder / run.name, "adapt", None,
                            {"method": run.method, "strategy": run.strategy, "base_alpha": merge.base_alpha,
                             "preserve_mean": merge.preserve_mean})
                  for run in merge.adapt]
        specs += [ModelSpec(f"linear_{a:g}", "baseline", "linear", folder / "linear" / f"alpha_{a:g}", "linear", a,
                            {"alpha": a}) for a in merge.baseline_alphas]
        specs += [ModelSpec(f"{method.name}_{w:g}", "baseline", method.name, folder / method.name / f"lambda_{w:g}",
                            "task_vector", w, {"method": method.method, "lambda": w, "density": method.density})
                  for method in merge.task_vector_methods for w in method.weights]
        return specs

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
        """Korean data (corpus or synthetic), the English retention set, and the adaptive merges' inputs."""
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
            share = data.english_korean_share
            self._item("prepare", "synthetic English VQA" + (f" ({share:g} of train in Korean)" if share else ""),
                       (self.english_data / "test.jsonl").exists(),
                       lambda: generate(SyntheticConfig(output=str(self.english_data), n=data.synthetic_samples,
                                                        lang="en", seed=seed + 1, image_size=data.image_size,
                                                        extra_lang="ko" if share else None, extra_share=share),
                                        progress=False))
        if self.config.merge.adapt:
            self._item("prepare", "unlabeled inputs (val: adapt, test: held out)",
                       all(path.exists() for path in self.unlabeled.values()), self._write_unlabeled)

    def _write_unlabeled(self) -> None:
        from cmaam.pipeline.families import write_unlabeled

        for name, split in (("adapt", "val"), ("held_out", "test")):
            # a split that is missing or empty adds nothing (an empty result fails at the adaptive merge)
            sets = {lang: folder / f"{split}.jsonl" for lang, folder in (("ko", self.korean_data),
                                                                          ("en", self.english_data))}
            write_unlabeled({lang: path for lang, path in sets.items() if path.is_file() and path.stat().st_size},
                            self.unlabeled[name])

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
        """Each fine-tune of the base on the Korean training split."""
        for arm in self.arms():
            run = "finetuned-training" if arm.name == FIRST_ARM else f"{arm.name}-training"
            self._item("finetune", arm.label("LoRA on Korean"), arm.finetuned_model.exists(),
                       self._train(arm.settings, self.base_model, self.korean_data, arm.finetuned_model.parent, run))

    def merge(self) -> None:
        """Per arm: one CMAAM merge per strategy (with its analysis), the --preserve-mean curves and the
        adaptive merges (which start from the CMAAM plan of their strategy)."""
        from cmaam.alignment.merge import merge_vlm

        merge = self.config.merge
        runs = {run.name: run for run in merge.adapt}
        for arm in self.arms():
            for spec in self.models(arm):
                if spec.kind not in ("cmaam", "preserve_mean", "adapt"):
                    continue
                alphas = dataclasses.replace(merge.alphas(spec.settings["strategy"]),
                                             base_alpha=spec.settings["base_alpha"],
                                             preserve_mean=spec.settings["preserve_mean"])
                run = runs.get(spec.name) if spec.kind == "adapt" else None
                self._item("merge", arm.label(spec.name), spec.path.exists(),
                           lambda arm=arm, spec=spec, alphas=alphas, run=run: merge_vlm(
                               arm.finetuned_model, self.base_model, spec.path, alphas, self.config.options,
                               interp=merge.interp, model_type=merge.model_type, rules_file=merge.rules_file,
                               analyze=True, adapt=self._adapter(run) if run else None))

    def _adapter(self, run: AdaptRun):
        """The adapter of one adaptive run (inputs: the unlabeled val splits; held out: test)."""
        from cmaam.search.adapt import make_adapter

        options = run.options(self.unlabeled["adapt"], self.unlabeled["held_out"])
        return make_adapter(options, self.config.options)

    def baselines(self) -> None:
        """Per arm: the linear family (one sweep, inputs read once) and the task-vector families."""
        from cmaam.merging.config_merge import merge_from_config
        from cmaam.merging.mergekit_config import parse_merge_config
        from cmaam.merging.sweep import sweep, sweep_output

        for arm in self.arms():
            folder = arm.models_folder / "linear"
            alphas = self.config.merge.baseline_alphas
            missing = [a for a in alphas if not sweep_output(folder, a).exists()]
            if alphas:
                self._item("baselines", arm.label("linear " + "/".join(f"{a:g}" for a in alphas)), not missing,
                           lambda folder=folder, missing=missing, arm=arm: sweep(
                               arm.finetuned_model, self.base_model, folder, missing, self.config.options))
            for method in self.config.merge.task_vector_methods:
                for weight in method.weights:
                    output = arm.models_folder / method.name / f"lambda_{weight:g}"
                    config = method.config(self.base_model, arm.finetuned_model, weight)
                    self._item("baselines", arm.label(f"{method.name} lambda {weight:g}"), output.exists(),
                               lambda config=config, output=output: merge_from_config(
                                   parse_merge_config(config, yaml_text(config)), output, self.config.options))

    def evaluate(self) -> None:
        """Every model of every arm on the Korean test split and the English retention set."""
        evaluation = self.config.evaluation
        for arm in self.arms():
            for spec in self.models(arm):
                done = (arm.results / spec.name / "metrics.json").exists()
                self._item("evaluate", arm.label(spec.name), done, lambda spec=spec, arm=arm: evaluate_model(
                    spec.path, spec.name, spec.role, self.korean_data / "test.jsonl",
                    self.english_data / "test.jsonl", arm.results, limit=evaluation.limit,
                    batch_size=evaluation.batch_size, max_new_tokens=evaluation.max_new_tokens,
                    device=self.config.device, wandb_mode=self.config.wandb_mode,
                    wandb_project=self.config.wandb_project, group=self.config.name,
                    details={"family": spec.family, "parameter": spec.parameter, "arm": arm.name, **spec.settings}))

    def compare(self) -> None:
        """Per arm: the comparison table (Markdown, CSV), its plot and the frontier (CSV, plot)."""
        from cmaam.pipeline.compare import compare_runs, report_markdown

        for arm in self.arms():
            def work(arm: Arm = arm) -> None:
                comparison, _ = compare_runs([arm.results], arm.comparison)
                print(report_markdown(comparison))

            self._run("compare", arm.label("comparison table and frontier"), work)

    def tables(self) -> list[tuple[str, Path]]:
        """(arm name, comparison.md) of every arm whose comparison exists."""
        return [(arm.name, arm.comparison / "comparison.md") for arm in self.arms()
                if (arm.comparison / "comparison.md").is_file()]

    def inputs(self) -> list[str | Path | None]:
        """What the experiment reads from outside its folder: the Korean corpus, the English set, the base model."""
        data, base = self.config.data, self.config.base_model.path
        return [data.korean_source, data.english, self.base_model if base else None]

    def run(self, steps: Sequence[str] | None = None) -> Path:
        """Run the steps in order (all by default); returns the (first arm's) comparison folder.

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


def yaml_text(data: dict) -> str:
    """YAML text of a mergekit config (saved as mergekit_config.yml beside the merged weights)."""
    import yaml

    return yaml.safe_dump(data, sort_keys=False)


def evaluate_model(model: str | Path, name: str, role: str, korean: str | Path, english: str | Path,
                   results_root: str | Path, limit: int | None = None, batch_size: int = 16,
                   max_new_tokens: int = 16, device: str = "auto", wandb_mode: str = "offline",
                   wandb_project: str = "cmaam", group: str | None = None,
                   details: dict | None = None) -> dict[str, float]:
    """Evaluate one model on both sets into results_root/<name>/ (metrics prefixed 'ko/' and 'en/').

    ``details`` (family, parameter, how the model was made) are recorded in the run's config.yaml."""
    from cmaam.io.tracking import start_run
    from eval.generation import load_generator
    from eval.vqa import evaluate_vqa, load_vqa_jsonl

    sets = {"ko": load_vqa_jsonl(korean, limit=limit), "en": load_vqa_jsonl(english, limit=limit)}
    generator = load_generator(str(model), backend="hf", device=device, batch_size=batch_size,
                               max_new_tokens=max_new_tokens)
    config = {"model": str(model), "model_name": name, "role": role, "korean": str(korean),
              "english": str(english), "limit": limit, "max_new_tokens": max_new_tokens, **(details or {})}
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
