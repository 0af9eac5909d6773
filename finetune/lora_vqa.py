"""Fine-tune a VLM on VQA JSONL data: peft LoRA on the language model (or full fine-tuning), HF Trainer.

Writes OUTPUT/adapter (LoRA only), OUTPUT/merged (full HF model + processor), OUTPUT/train_result.json,
and keeps OUTPUT/checkpoints/ while training so ``--resume`` continues an interrupted run. Multi-GPU:
``accelerate launch -m finetune.lora_vqa ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from cmaam.io.atomic import atomic_directory, atomic_write_json, claim_output
from cmaam.io import load_config, parse_dtype
from cmaam.core.cli import run_cli
from cmaam.core.errors import CMAAMError, load_errors
from cmaam.alignment.layouts import get_layout
from cmaam.core.options import add_execution_options
from cmaam.core.reproducible import set_threads

logger = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
RESULT_FILE = "train_result.json"
VISION_COMPONENTS = ("vision_encoder", "cross_modal_bridge")


@dataclass
class TrainingSettings:
    """How a model is trained: the hyperparameters (an experiment config's ``finetune`` and
    ``base_model.training`` sections are these fields)."""

    epochs: float = 3.0
    batch_size: int = 1
    grad_accum: int = 16
    lora_rank: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup: float = 0.03
    scheduler: str = "cosine"
    target_modules: tuple[str, ...] | None = None
    train_vision: bool = False
    train_embeddings: bool = False
    full_finetune: bool = False
    gradient_checkpointing: bool = False
    bf16: bool | None = None
    max_steps: int | None = None
    train_limit: int | None = None
    max_length: int | None = 2048
    save_steps: int = 200
    save_total_limit: int = 2
    logging_steps: int = 10

    def validate(self) -> None:
        """Range checks with one-line errors, before anything is loaded."""
        for name in ("batch_size", "grad_accum", "lora_rank", "save_steps", "logging_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                raise CMAAMError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.epochs <= 0 and not self.max_steps:
            raise CMAAMError(f"--epochs must be positive, got {self.epochs}")
        for name in ("max_steps", "train_limit", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise CMAAMError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.lr <= 0:
            raise CMAAMError(f"--lr must be positive, got {self.lr}")
        if not 0 <= self.lora_dropout < 1:
            raise CMAAMError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        if self.full_finetune and (self.target_modules or self.train_embeddings):
            raise CMAAMError("--target-modules and --train-embeddings apply to LoRA; "
                             "--full-finetune trains every language-model weight")


@dataclass(kw_only=True)
class LoraTrainConfig(TrainingSettings):
    """Everything a fine-tuning run needs: the training settings, plus the run's inputs, outputs and tracking.
    The CLI flags map one to one onto these fields."""

    model: str
    data: str
    output: str
    resume: bool = False
    overwrite: bool = False
    seed: int = 0
    eval_limit: int | None = None
    eval_batch_size: int = 16
    max_new_tokens: int = 32
    keep_checkpoints: bool = False
    run_name: str | None = None
    results_root: str = "results"
    wandb_mode: str = "offline"
    wandb_project: str = "cmaam"
    trust_remote_code: bool = False
    threads: int | None = None
    progress: bool = True

    @classmethod
    def from_settings(cls, settings: TrainingSettings, **run: Any) -> LoraTrainConfig:
        """A run of ``settings``; ``run`` gives model, data, output and any other run field."""
        return cls(**{field.name: getattr(settings, field.name) for field in dataclasses.fields(TrainingSettings)},
                   **run)

    def validate(self) -> None:
        """Range checks with one-line errors, before anything is loaded."""
        super().validate()
        for name in ("eval_batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise CMAAMError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise CMAAMError(f"--threads must be at least 1, got {self.threads}")
        if self.eval_limit is not None and self.eval_limit < 0:
            raise CMAAMError(f"--eval-limit must be 0 (no evaluation) or more, got {self.eval_limit}")
        if self.resume and self.overwrite:
            raise CMAAMError("choose --resume (continue) or --overwrite (start again), not both")


@dataclass
class TrainResult:
    """What a run produced: folders, the loss history, step count, timing and test metrics."""

    output: Path
    merged: Path
    adapter: Path | None
    global_step: int
    loss_history: list[dict] = field(default_factory=list)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    trainable_parameters: int = 0
    target_modules: list[str] = field(default_factory=list)
    resumed_from: str | None = None
    train_seconds: float = 0.0
    run_dir: Path | None = None

    def to_json(self) -> dict:
        return {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(self).items()}


# -- planning --------------------------------------------------------------------------------------
def module_components(model, layout) -> dict[str, str]:
    """Component of every module that holds parameters directly (classified by its first parameter name)."""
    components = {}
    for name, module in model.named_modules():
        own = [parameter_name for parameter_name, _ in module.named_parameters(recurse=False)]
        if own:
            components[name] = layout.classify(f"{name}.{own[0]}" if name else own[0]).component
    return components


def lora_targets(model, layout, train_vision: bool = False, suffixes: Sequence[str] | None = None) -> list[str]:
    """Full names of the Linear modules LoRA adapts: the language model's (and the vision side's with
    ``train_vision``), optionally only those whose name ends with one of ``suffixes``."""
    components = module_components(model, layout)
    allowed = {"language_model", *(VISION_COMPONENTS if train_vision else ())}
    names = [name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and components.get(name) in allowed]
    if suffixes:
        names = [name for name in names if any(name == s or name.endswith("." + s) for s in suffixes)]
        if not names:
            raise CMAAMError(f"--target-modules {' '.join(suffixes)} match no linear layer of the "
                             f"{'model' if train_vision else 'language model'}")
    if not names:
        raise CMAAMError("the model has no linear layers in its language model to adapt")
    return names


def embedding_modules(model, layout) -> list[str]:
    """The token-embedding and LM-head modules (shared_embedding component, norms excluded)."""
    components = module_components(model, layout)
    return [name for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Embedding, torch.nn.Linear)) and components.get(name) == "shared_embedding"]


def full_finetune_parameters(model, layout, train_vision: bool = False) -> list[str]:
    """Parameters trained by --full-finetune: language model, embeddings/head and bridge (vision with
    ``train_vision``); everything else is frozen."""
    frozen = set() if train_vision else {"vision_encoder"}
    return [name for name, _ in model.named_parameters() if layout.classify(name).component not in frozen]


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete Trainer checkpoint (one whose trainer_state.json was written) under ``folder``."""
    if not folder.is_dir():
        return None
    complete = [path for path in folder.glob("checkpoint-*")
                if path.name.split("-")[-1].isdigit() and (path / "trainer_state.json").is_file()]
    return max(complete, key=lambda path: int(path.name.split("-")[-1]), default=None)


def prepare_output(config: LoraTrainConfig) -> Path | None:
    """Check the output folder against --resume/--overwrite; return the checkpoint to resume from."""
    output = Path(config.output)
    checkpoints = output / CHECKPOINTS
    if output.exists() and not output.is_dir():
        raise CMAAMError(f"{output}: exists and is not a folder")
    if config.resume:
        found = last_checkpoint(checkpoints)
        if found is None:
            logger.warning("%s: no complete checkpoint to resume from; starting from the beginning", checkpoints)
        return found
    if config.overwrite:
        shutil.rmtree(checkpoints, ignore_errors=True)
        return None
    if output.exists() and any(output.iterdir()):
        hint = " (it holds checkpoints: pass --resume to continue)" if checkpoints.exists() else ""
        raise CMAAMError(f"{output}: output already exists{hint}; pass --overwrite to start again")
    return None


def check_inputs(config: LoraTrainConfig) -> None:
    """Fail early, with one line, on a missing model, processor or data split."""
    model, data = Path(config.model), Path(config.data)
    if not model.is_dir():
        raise CMAAMError(f"{model}: model folder not found")
    load_config(model)
    if not (model / "preprocessor_config.json").exists() and not (model / "processor_config.json").exists():
        raise CMAAMError(f"{model}: no processor (preprocessor_config.json or processor_config.json); "
                         "save the processor with the model")
    if not data.is_dir():
        raise CMAAMError(f"{data}: data folder not found")
    if not (data / "train.jsonl").is_file():
        raise CMAAMError(f"{data}: no train.jsonl (expected train/val/test.jsonl and images/)")
    if config.eval_limit != 0 and not (data / "test.jsonl").is_file():
        raise CMAAMError(f"{data}: no test.jsonl for the final evaluation (pass --eval-limit 0 to skip it)")


def use_bf16(config: LoraTrainConfig) -> bool:
    """bf16 mixed precision: as asked, else on a CUDA GPU that supports it."""
    if config.bf16 is not None:
        if config.bf16 and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise CMAAMError("--bf16: this GPU does not support bfloat16")
        return config.bf16
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


# -- model -----------------------------------------------------------------------------------------
def load_model(config: LoraTrainConfig, bf16: bool):
    """The base VLM, its processor and layout; LoRA-wrapped or with frozen parameters set."""
    from transformers import AutoModelForImageTextToText

    from cmaam.io.processors import load_processor

    processor = load_processor(config.model, trust_remote_code=config.trust_remote_code)
    # LoRA keeps the frozen base in bf16 on a GPU; full fine-tuning keeps float32 master weights.
    dtype = torch.bfloat16 if bf16 and not config.full_finetune else torch.float32
    with load_errors(config.model, "model"):
        model = AutoModelForImageTextToText.from_pretrained(config.model, dtype=dtype, use_safetensors=True,
                                                            trust_remote_code=config.trust_remote_code)
    layout = get_layout(config=load_config(config.model))
    if config.full_finetune:
        trainable = set(full_finetune_parameters(model, layout, config.train_vision))
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in trainable)
        return model, processor, sorted(trainable)
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, layout, config.train_vision, config.target_modules)
    saved = embedding_modules(model, layout) if config.train_embeddings else None
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, modules_to_save=saved, bias="none")
    with warnings.catch_warnings():  # peft reads a property transformers 5 deprecated; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora), processor, targets + (saved or [])


def base_dtype(model_path: str) -> torch.dtype:
    """The dtype the base checkpoint is stored in (the merged model is saved in the same one)."""
    config = load_config(model_path)
    name = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    return parse_dtype(name) if name else torch.float32


def save_outputs(model, processor, config: LoraTrainConfig):
    """Write OUTPUT/adapter (LoRA) and OUTPUT/merged (full model + processor), each atomically.

    Returns (merged folder, adapter folder or None, the merged in-memory model).
    """
    from cmaam.io.processors import save_processor

    output = Path(config.output)
    adapter = None
    if config.full_finetune:
        shutil.rmtree(output / "adapter", ignore_errors=True)  # a LoRA run's adapter would no longer match
    else:
        adapter = output / "adapter"
        with atomic_directory(adapter, overwrite=True, inputs=[config.model, config.data]) as folder:
            model.save_pretrained(folder)
            save_processor(processor, folder)
        model = model.merge_and_unload()
    merged = output / "merged"
    with atomic_directory(merged, overwrite=True, inputs=[config.model, config.data]) as folder:
        model = model.to(base_dtype(config.model))
        model.save_pretrained(folder)
        save_processor(processor, folder)
    return merged, adapter, model


# -- training --------------------------------------------------------------------------------------
def training_arguments(config: LoraTrainConfig, bf16: bool):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(Path(config.output) / CHECKPOINTS), num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr, weight_decay=config.weight_decay,
        warmup_steps=config.warmup, lr_scheduler_type=config.scheduler, logging_steps=config.logging_steps,
        logging_first_step=True, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=config.save_total_limit, seed=config.seed, data_seed=config.seed, bf16=bf16,
        activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        remove_unused_columns=False, report_to="none", ddp_find_unused_parameters=False, dataloader_pin_memory=False,
        disable_tqdm=not config.progress, use_cpu=not torch.cuda.is_available(), optim="adamw_torch",
    )


def _tracker_callback(run):
    """A Trainer callback forwarding each logged training loss to the tracked run."""
    from transformers import TrainerCallback

    class TrackerCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                run.log({f"train/{key}": value for key, value in logs.items()}, step=state.global_step)

    return TrackerCallback()


def loss_figure(history: list[dict], title: str):
    """Training loss against optimizer step (matplotlib figure, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.2))
    axes.plot([row["step"] for row in history], [row["loss"] for row in history], marker=".")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss (answer tokens)")
    axes.set_title(title)
    figure.tight_layout()
    return figure


def evaluate_model(model, processor, config: LoraTrainConfig):
    """Answer the test split with the trained model (eval.vqa); None with --eval-limit 0."""
    from eval.generation import HFGenerator
    from eval.vqa import evaluate_vqa, load_vqa_jsonl

    if config.eval_limit == 0:
        return None
    items = load_vqa_jsonl(Path(config.data) / "test.jsonl", limit=config.eval_limit)
    generator = HFGenerator.from_model(model, processor, batch_size=config.eval_batch_size,
                                       max_new_tokens=config.max_new_tokens, progress=config.progress)
    return evaluate_vqa(generator, items, max_new_tokens=config.max_new_tokens)


def train(config: LoraTrainConfig, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Fine-tune, save adapter and merged model, evaluate on the test split and log everything."""
    from accelerate import PartialState

    config.validate()
    check_inputs(config)
    main_process = PartialState().is_main_process
    # Before any work: the output may not overlap the model or data; one training run per output (main process).
    claim = claim_output(config.output, inputs=[config.model, config.data], overwrite=None) if main_process \
        else contextlib.nullcontext()
    with claim:
        return _train(config, callbacks, main_process)


def _train(config: LoraTrainConfig, callbacks: Sequence[Any], main_process: bool) -> TrainResult:
    """The body of ``train``, run while the output is claimed."""
    from transformers import Trainer, set_seed

    from cmaam.io.tracking import start_run
    from eval.vqa import load_vqa_jsonl
    from finetune.collator import VQAChatEncoder, VQACollator, VQATrainDataset

    resume_from = prepare_output(config)
    bf16 = use_bf16(config)
    if config.threads:
        set_threads(config.threads)
    items = load_vqa_jsonl(Path(config.data) / "train.jsonl", limit=config.train_limit)
    set_seed(config.seed)
    model, processor, targets = load_model(config, bf16)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("training %d parameters (%s)", trainable,
                "full fine-tuning" if config.full_finetune else f"LoRA on {len(targets)} modules")
    dataset = VQATrainDataset(items, VQAChatEncoder(processor, max_length=config.max_length))
    run_name = config.run_name or Path(config.output).name
    tracking = start_run(run_name, asdict(config), root=config.results_root, wandb_mode=config.wandb_mode,
                         project=config.wandb_project, group="finetune", inputs=[config.model, config.data]) \
        if main_process else contextlib.nullcontext()
    with tracking as run:
        trainer = Trainer(model=model, args=training_arguments(config, bf16), train_dataset=dataset,
                          data_collator=VQACollator(processor.tokenizer.pad_token_id),
                          callbacks=[*([_tracker_callback(run)] if run else []), *callbacks])
        started = time.monotonic()
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        seconds = time.monotonic() - started
        history = [{"step": row["step"], "loss": row["loss"]} for row in trainer.state.log_history if "loss" in row]
        result = TrainResult(output=Path(config.output), merged=Path(config.output) / "merged", adapter=None,
                             global_step=trainer.state.global_step, loss_history=history,
                             trainable_parameters=trainable,
                             target_modules=[] if config.full_finetune else list(targets),
                             resumed_from=str(resume_from) if resume_from else None, train_seconds=seconds,
                             run_dir=run.dir if run else None)
        if not main_process:
            return result
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        result.merged, result.adapter, merged_model = save_outputs(unwrapped, processor, config)
        if history:
            run.save_figure(loss_figure(history, f"{run_name}: training loss"), "loss")
        evaluation = evaluate_model(merged_model, processor, config)
        if evaluation is not None:
            result.eval_metrics = evaluation.metrics
            run.save_samples(evaluation.samples, "test_samples")
        run.log_summary({"train/global_step": result.global_step, "train/seconds": seconds,
                         "train/final_loss": history[-1]["loss"] if history else None,
                         **{f"test/{key}": value for key, value in result.eval_metrics.items()}})
        atomic_write_json(Path(config.output) / RESULT_FILE, result.to_json())
    if not config.keep_checkpoints:
        shutil.rmtree(Path(config.output) / CHECKPOINTS, ignore_errors=True)
    return result


# -- command line ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m finetune.lora_vqa", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="base VLM folder (HF format, with its processor)")
    parser.add_argument("--data", required=True, help="VQA folder with train.jsonl, test.jsonl and images/")
    parser.add_argument("--output", required=True, help="output folder (adapter/, merged/, checkpoints/)")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=1, help="per-device batch size")
    parser.add_argument("--grad-accum", type=int, default=16, help="gradient accumulation steps")
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--lora-alpha", type=int, default=128)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=2e-5, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--warmup", type=float, default=0.03, help="warm-up: a fraction of the steps (<1) or steps")
    parser.add_argument("--scheduler", default="cosine", help="learning-rate schedule (transformers names)")
    parser.add_argument("--target-modules", nargs="+", default=None, metavar="NAME",
                        help="LoRA only these linear layers (name suffixes, e.g. q_proj v_proj); "
                             "default: every linear layer of the language model")
    parser.add_argument("--train-vision", action="store_true",
                        help="also train the vision encoder and bridge (LoRA on their linear layers, or fully)")
    parser.add_argument("--train-embeddings", action="store_true",
                        help="LoRA runs: also train the token embeddings and LM head fully (a new language or script)")
    parser.add_argument("--full-finetune", action="store_true",
                        help="train every language-model, embedding and bridge weight without LoRA")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 mixed precision (default: on a GPU that supports it)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in OUTPUT")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps")
    parser.add_argument("--train-limit", type=int, default=None, help="use the first N training samples")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="evaluate on the first N test samples (default all; 0 skips the evaluation)")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=2048, help="longest training sequence in tokens")
    parser.add_argument("--save-steps", type=int, default=200, help="checkpoint every N optimizer steps")
    parser.add_argument("--save-total-limit", type=int, default=2)
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep OUTPUT/checkpoints after success")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--run-name", default=None, help="tracking run name (default: the output folder name)")
    parser.add_argument("--results-root", default="results", help="tracking folder (results/<run>/)")
    parser.add_argument("--wandb-mode", default="offline", choices=("offline", "online", "disabled"))
    parser.add_argument("--wandb-project", default="cmaam")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch, intra- and inter-op (1 is fastest for tiny models on a busy CPU)")
    add_execution_options(parser, ("seed", "overwrite", "trust_remote_code", "progress"), help={
        "seed": "seed of LoRA initialisation, dropout and data order (default: 0)",
        "overwrite": "discard an earlier run in OUTPUT"})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    if args["target_modules"] is not None:
        args["target_modules"] = tuple(args["target_modules"])
    result = train(LoraTrainConfig(**args))
    summary = {key: value for key, value in result.eval_metrics.items() if "/" not in key}
    print(json.dumps({"merged": str(result.merged), "adapter": str(result.adapter) if result.adapter else None,
                      "global_step": result.global_step,
                      "final_loss": result.loss_history[-1]["loss"] if result.loss_history else None,
                      "test": summary}, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    run_cli(main)
