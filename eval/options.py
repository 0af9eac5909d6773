"""Command-line options shared by the evaluation CLIs: the model/generator and the tracked run."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from cmaam.errors import CMAAMError
from cmaam.tracking import WANDB_MODES, default_wandb_mode
from eval.generation import BACKENDS


def add_generator_options(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """--model, --backend, --device, --dtype, --batch-size, --max-new-tokens, --trust-remote-code, --allow-pickle."""
    group = parser.add_argument_group("model and generation")
    group.add_argument("--model", required=True, help="Hugging Face model folder")
    group.add_argument("--backend", default="auto", help=f"{' | '.join(BACKENDS)} (auto: vLLM if installed with a GPU)")
    group.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (HF backend)")
    group.add_argument("--dtype", default=None, help="bfloat16 | float16 | float32 (default: checkpoint's on GPU, "
                                                     "float32 on CPU)")
    group.add_argument("--batch-size", type=int, default=8)
    group.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    group.add_argument("--trust-remote-code", action="store_true", help="run the model folder's own Python code")
    group.add_argument("--allow-pickle", action="store_true", help="allow .bin/.pt pickle weights")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--output-dir, --run-name, --wandb-mode, --wandb-project, --overwrite, --no-progress."""
    group = parser.add_argument_group("results")
    group.add_argument("--output-dir", default="results", help="root folder; the run writes OUTPUT_DIR/RUN_NAME/")
    group.add_argument("--run-name", default=None, help="run folder name (default: derived from task and model)")
    group.add_argument("--wandb-mode", default=default_wandb_mode(), help=f"{' | '.join(WANDB_MODES)} "
                       "(default: $WANDB_MODE or offline)")
    group.add_argument("--wandb-project", default="cmaam")
    group.add_argument("--overwrite", action="store_true", help="replace an earlier run of the same name")
    group.add_argument("--no-progress", action="store_true", help="hide progress bars")


def generator_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for ``load_generator`` from parsed options."""
    return dict(backend=args.backend, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens, trust_remote_code=args.trust_remote_code,
                allow_pickle=args.allow_pickle, progress=not args.no_progress)


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for the run (root folder, name, W&B) from parsed options."""
    return dict(output_dir=args.output_dir, run_name=args.run_name, wandb_mode=args.wandb_mode,
                wandb_project=args.wandb_project, overwrite=args.overwrite)


def default_run_name(task: str, model: str | Path) -> str:
    """'<task>-<model folder name>' with characters outside [A-Za-z0-9._-] replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{task}-{Path(model).resolve().name}")


def check_run_free(output_dir: str | Path, run_name: str, overwrite: bool) -> Path:
    """The run folder; a one-line error if it already holds finished results and --overwrite was not given."""
    folder = Path(output_dir) / run_name
    if (folder / "metrics.json").exists() and not overwrite:
        raise CMAAMError(f"{folder}: results already exist (pass --overwrite or choose another --run-name)")
    return folder
