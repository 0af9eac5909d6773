"""Command-line options shared by the evaluation CLIs: the model/generator and the tracked run."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator, Sequence

from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions, add_execution_options
from cmaam.io.tracking import WANDB_MODES, default_wandb_mode
from eval.generation import BACKENDS


EXECUTION = ("device", "dtype", "trust_remote_code", "allow_pickle", "adapter_base", "overwrite", "progress")


def add_generator_options(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """--model, --backend, --batch-size, --max-new-tokens (device, dtype and trust come with ``add_run_options``)."""
    group = parser.add_argument_group("model and generation")
    group.add_argument("--model", required=True, help="Hugging Face model folder or peft LoRA adapter folder")
    group.add_argument("--backend", default="auto", help=f"{' | '.join(BACKENDS)} (auto: vLLM if installed with a GPU)")
    group.add_argument("--batch-size", type=int, default=8)
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--output-dir, --run-name, --wandb-mode, --wandb-project, and the execution options (device, dtype,
    --trust-remote-code, --allow-pickle, --adapter-base, --overwrite, --no-progress)."""
    group = parser.add_argument_group("results")
    group.add_argument("--output-dir", default="results", help="root folder; the run writes OUTPUT_DIR/RUN_NAME/")
    group.add_argument("--run-name", default=None, help="run folder name (default: derived from task and model)")
    group.add_argument("--wandb-mode", default=default_wandb_mode(), help=f"{' | '.join(WANDB_MODES)} "
                       "(default: $WANDB_MODE or offline)")
    group.add_argument("--wandb-project", default="cmaam")
    add_execution_options(parser, EXECUTION, help={
        "dtype": "bfloat16, float16 or float32 (default: the checkpoint's on a GPU, float32 on the CPU)",
        "device": "auto (cuda when available), cpu, cuda or cuda:N (HF backend; default: auto)",
        "overwrite": "replace an earlier run of the same name"})


def generator_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``load_generator`` from parsed options."""
    options = ExecutionOptions.from_args(args)
    return dict(backend=args.backend, device=options.device, dtype=options.dtype, batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens, trust_remote_code=options.trust_remote_code,
                allow_pickle=options.allow_pickle, progress=options.progress, adapter_base=options.adapter_base)


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for the run (root folder, name, W&B) from parsed options."""
    return dict(output_dir=args.output_dir, run_name=args.run_name, wandb_mode=args.wandb_mode,
                wandb_project=args.wandb_project, overwrite=ExecutionOptions.from_args(args).overwrite)


def default_run_name(task: str, model: str | Path) -> str:
    """'<task>-<model folder name>' with characters outside [A-Za-z0-9._-] replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{task}-{Path(model).resolve().name}")


def check_run_free(output_dir: str | Path, run_name: str, overwrite: bool, wandb_mode: str | None = None) -> Path:
    """The run folder; a one-line error if it already exists and --overwrite was not given (or the name or the
    W&B mode is invalid), so a run stops before its model is loaded."""
    if not run_name or run_name in (".", "..") or "/" in run_name or os.sep in run_name:
        raise CMAAMError(f"bad run name {run_name!r} (a single folder name, no '/')")
    if wandb_mode is not None and wandb_mode not in WANDB_MODES:
        raise CMAAMError(f"unknown W&B mode {wandb_mode!r} (choose {', '.join(WANDB_MODES)})")
    folder = Path(output_dir) / run_name
    if folder.exists() and not overwrite:
        what = "results already exist" if (folder / "metrics.json").exists() else "already exists (not a finished run)"
        raise CMAAMError(f"{folder}: {what} (pass --overwrite or choose another --run-name)")
    if folder.exists() and not folder.is_dir():
        raise CMAAMError(f"{folder}: exists and is not a folder")
    return folder


@contextlib.contextmanager
def tracked_run(run_name: str, config: dict[str, Any], output_dir: str | Path = "results",
                wandb_mode: str = "offline", wandb_project: str = "cmaam", group: str | None = None,
                overwrite: bool = False, inputs: Sequence[str | Path | None] = ()) -> Iterator[Any]:
    """A tracked run (``cmaam.io.tracking.Run``) that appears as OUTPUT_DIR/RUN_NAME only when the block succeeds.

    The run (config.yaml, wandb/, results) is written to a hidden folder beside the final one and moved into
    place at the end, replacing an earlier run only then (with ``overwrite``). On any failure, interruption
    included, the hidden folder is removed, and so are the folders this run created: nothing is left.
    The run folder may not overlap ``inputs`` and is locked (``cmaam.io.atomic.claim_output``) throughout.
    """
    from cmaam.io.atomic import claim_output, replace_directory
    from cmaam.io.tracking import start_run

    final = check_run_free(output_dir, run_name, overwrite, wandb_mode)
    root = Path(output_dir)
    created = [folder for folder in (root, *root.parents) if not folder.exists()]  # innermost first
    staging = root / f".{run_name}.partial-{os.getpid()}"
    with claim_output(final, inputs=inputs, overwrite=None):
        try:
            with start_run(run_name, config, root=staging, wandb_mode=wandb_mode, project=wandb_project,
                           group=group) as run:
                yield run
            replace_directory(staging / run_name, final)
            run.dir = final
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            for folder in created:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
