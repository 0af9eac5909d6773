"""Strict model loading for evaluation: a checkpoint must fill the model exactly, and every load problem is one line.

An evaluation of a model with a missing weight would score a randomly initialised layer, so missing, unexpected
and mis-shaped weights are errors here (transformers only warns). Anything ``from_pretrained`` raises while
reading the user's folder (safetensors, pickle, OS and transformers errors) becomes a ``CMAAMError`` naming the
folder; set ``CMAAM_DEBUG=1`` to see the original traceback.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, Iterator

from cmaam.core.errors import CMAAMError

NAMES_SHOWN = 3
MESSAGE_LENGTH = 160


def short_message(error: BaseException) -> str:
    """'Type: first line of the message', cut to about MESSAGE_LENGTH characters (at a sentence end if possible).

    torch's weights-only unpickler explains itself at length; its actual reason ("WeightsUnpickler error: ...")
    is appended.
    """
    text = str(error).strip().splitlines()[0].strip() if str(error).strip() else ""
    if len(text) > MESSAGE_LENGTH:
        sentence = text.find(". ")
        text = text[:sentence] if 0 < sentence < MESSAGE_LENGTH else text[:MESSAGE_LENGTH].rstrip() + "..."
    reason = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(error))
    if reason:
        text = f"{text.rstrip('.')}: {reason.group(1).strip()}"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_weight_files(path: str | Path, allow_pickle: bool = False) -> None:
    """Refuse pickled weights unless allowed, and check every safetensors file (header and size) before loading.

    Safetensors headers are read by ``CheckpointReader`` (no tensor data), so a corrupt or truncated shard is
    reported by its file name before any model is built. Pickle-only folders, when allowed, are left to the loader.
    """
    from cmaam.io import CheckpointReader

    path = Path(path)
    has_safetensors = (path / "model.safetensors.index.json").is_file() or any(path.glob("*.safetensors"))
    if has_safetensors or not allow_pickle:
        CheckpointReader(path, allow_pickle=False)


@contextlib.contextmanager
def load_errors(path: str | Path, what: str = "the model") -> Iterator[None]:
    """Turn any exception raised while loading ``what`` from ``path`` into one CMAAMError line."""
    try:
        yield
    except CMAAMError:
        raise
    except Exception as error:  # safetensors, pickle, OS and transformers errors alike come from the user's files
        raise CMAAMError(f"{path}: cannot load {what} ({short_message(error)})") from error


@contextlib.contextmanager
def quiet_transformers(progress: bool = True) -> Iterator[None]:
    """Silence transformers' load report (strict loading reports instead) and, unless ``progress``, its bars."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _names(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:NAMES_SHOWN])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > NAMES_SHOWN else "")


def loading_problems(model: Any, info: dict) -> list[str]:
    """The problems in transformers' loading info: missing, unexpected and mis-shaped weights, load messages.

    A tied weight (``lm_head.weight`` with ``tie_word_embeddings``) is not missing when its partner was loaded:
    transformers 5 already leaves it out of ``missing_keys``; ties listed in ``all_tied_weights_keys`` are
    also dropped here so a different transformers version cannot turn a tie into an error.
    """
    missing = set(info.get("missing_keys") or ())
    for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        if target in missing and source not in missing:
            missing.discard(target)
        elif source in missing and target not in missing:
            missing.discard(source)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (would be random): {_names(sorted(missing))}")
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_names(unexpected)}")
    mismatched = info.get("mismatched_keys") or ()
    if mismatched:
        shown = [f"{key} (checkpoint {list(saved)}, model {list(expected)})" for key, saved, expected in
                 sorted(mismatched)[:NAMES_SHOWN]]
        problems.append(f"{len(mismatched)} of the wrong shape: {', '.join(shown)}")
    messages = [str(message).strip() for message in info.get("error_msgs") or ()]
    problems += [message.splitlines()[0] for message in messages if message]
    return problems


def load_pretrained_strict(model_class: Any, path: str | Path, progress: bool = True, **options: Any) -> Any:
    """``model_class.from_pretrained(path, **options)`` that refuses a checkpoint not matching the model exactly."""
    with load_errors(path), quiet_transformers(progress):
        model, info = model_class.from_pretrained(path, output_loading_info=True, ignore_mismatched_sizes=True,
                                                  **options)
    problems = loading_problems(model, info)
    if problems:
        raise CMAAMError(f"{path}: the checkpoint does not match the model: {'; '.join(problems)}")
    return model
