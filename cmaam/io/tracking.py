"""Run tracking: every run writes results/<name>/ (config.yaml, metrics.json, samples, figures) and logs to W&B.

W&B runs offline by default (no network; ``wandb sync results/<name>/wandb/offline-run-*`` later),
online or disabled on request. If wandb cannot be imported or started offline, the run continues
with local files only and a warning. Secrets (API keys, tokens, passwords) never reach config.yaml.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

from cmaam.io.atomic import (atomic_write_bytes, atomic_write_json, atomic_write_text, atomic_write_yaml,
                          check_no_overlap, output_lock)
from cmaam.core.errors import CMAAMError

logger = logging.getLogger(__name__)
WANDB_MODES = ("offline", "online", "disabled")
REDACTED = "<redacted>"
_SECRET_KEY = re.compile(r"(?:api[_-]?key|secret|passw(?:or)?d|credentials?|authorization|(?:^|[_-])token)$",
                         re.IGNORECASE)
_SECRET_VALUE = re.compile(r"^(?:[0-9a-f]{40}|(?:local-|wandb_v1_)[0-9A-Za-z_-]{20,}|hf_[0-9A-Za-z]{30,}|"
                           r"sk-[0-9A-Za-z_-]{20,})$")
_SECRET_ENVIRONMENT = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY")


def default_wandb_mode() -> str:
    """The W&B mode from $WANDB_MODE when it is one of offline/online/disabled ('dryrun' = offline), else offline."""
    mode = os.environ.get("WANDB_MODE", "offline").lower()
    return {"dryrun": "offline", "run": "online"}.get(mode, mode) if mode in WANDB_MODES + ("dryrun", "run") \
        else "offline"


def _plain(value: Any) -> Any:
    """Config values as YAML/JSON-safe plain data (paths as strings, dataclasses as dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def redact_secrets(config: Any) -> Any:
    """A copy of ``config`` with secret-looking keys and values (API keys, tokens) replaced by '<redacted>'."""
    secrets = {os.environ[name] for name in _SECRET_ENVIRONMENT if os.environ.get(name)}

    def clean(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            return {k: clean(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v, key) for v in value]
        if value is not None and _SECRET_KEY.search(key) and value not in ("", False):
            return REDACTED
        if isinstance(value, str) and (value in secrets or _SECRET_VALUE.match(value)
                                       or any(secret in value for secret in secrets)):
            return REDACTED
        return value

    return clean(_plain(config))


def _start_wandb(mode: str, directory: Path, name: str, project: str, group: str | None, config: dict):
    """A W&B run writing under ``directory``/wandb, or None (disabled, or wandb unusable offline)."""
    if mode == "disabled":
        return None
    try:
        import wandb
    except Exception as error:  # a broken wandb install must not stop an evaluation
        logger.warning("wandb unavailable (%s); logging to %s only", error, directory)
        return None
    try:
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)
        return wandb.init(mode=mode, dir=str(directory), project=project, group=group, name=name, config=config,
                          reinit="create_new", settings=settings)
    except Exception as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if mode == "online":
            raise CMAAMError(f"W&B online logging could not start ({message}); run `wandb login` "
                             "or use --wandb-mode offline") from None
        logger.warning("W&B could not start (%s); logging to %s only", message, directory)
        return None


class Run:
    """One tracked run: local files under ``dir`` and, unless disabled, a W&B run writing to dir/wandb.

    The run folder may not overlap ``inputs`` (the model, the data) and is locked until ``finish``.
    """

    def __init__(self, name: str, config: Mapping[str, Any], root: str | Path = "results",
                 wandb_mode: str = "offline", project: str = "cmaam", group: str | None = None,
                 inputs: Iterable[str | Path | None] = ()):
        if not name or name in (".", "..") or "/" in name or os.sep in name:
            raise CMAAMError(f"bad run name {name!r} (a single folder name, no '/')")
        if wandb_mode not in WANDB_MODES:
            raise CMAAMError(f"unknown W&B mode {wandb_mode!r} (choose {', '.join(WANDB_MODES)})")
        self.name = name
        self.dir = Path(root) / name
        check_no_overlap([self.dir], inputs)
        self.wandb = None
        with contextlib.ExitStack() as stack:
            stack.enter_context(output_lock(self.dir))
            self.dir.mkdir(parents=True, exist_ok=True)
            self.config = redact_secrets(dict(config))
            self.summary: dict[str, Any] = {}
            atomic_write_yaml(self.dir / "config.yaml", self.config)
            self.wandb = _start_wandb(wandb_mode, self.dir, name, project, group, self.config)
            self._lock = stack.pop_all()

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log a dict of values (one line of history.jsonl; a W&B history step)."""
        row = _plain(dict(metrics))
        line = json.dumps({"step": step, **row} if step is not None else row, sort_keys=True, ensure_ascii=False)
        with open(self.dir / "history.jsonl", "a", encoding="utf-8") as file:
            file.write(line + "\n")
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def log_summary(self, metrics: Mapping[str, Any]) -> Path:
        """Merge final figures into metrics.json (written atomically) and the W&B summary."""
        self.summary.update(_plain(dict(metrics)))
        path = atomic_write_json(self.dir / "metrics.json", self.summary)
        if self.wandb is not None:
            self.wandb.summary.update(_plain(dict(metrics)))
        return path

    def save_samples(self, rows: list[Mapping[str, Any]], name: str = "samples") -> Path:
        """Write per-sample rows to ``name``.jsonl atomically (sorted keys: same rows, same bytes)."""
        text = "".join(json.dumps(_plain(dict(row)), ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
        filename = name if name.endswith(".jsonl") else f"{name}.jsonl"
        return atomic_write_text(self.dir / filename, text)

    def save_figure(self, figure, name: str) -> Path:
        """Save a matplotlib figure as ``name``.png (atomically) and log it to W&B as an image; the figure is
        closed (a process that trains or evaluates many runs would otherwise keep every figure open)."""
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
        plt.close(figure)
        filename = name if name.endswith(".png") else f"{name}.png"
        path = atomic_write_bytes(self.dir / filename, buffer.getvalue())
        if self.wandb is not None:
            import wandb

            self.wandb.log({f"figures/{path.stem}": wandb.Image(str(path))})
        return path

    def finish(self, exit_code: int = 0) -> None:
        """Close the W&B run and release the run folder's lock (idempotent); local files are already complete."""
        try:
            if self.wandb is not None:
                self.wandb.finish(exit_code=exit_code)
                self.wandb = None
        finally:
            self._lock.close()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.finish(exit_code=0 if kind is None else 1)


def start_run(name: str, config: Mapping[str, Any], root: str | Path = "results", wandb_mode: str = "offline",
              project: str = "cmaam", group: str | None = None, inputs: Iterable[str | Path | None] = ()) -> Run:
    """Start a tracked run writing to ``root``/``name``/ (use as a context manager so W&B is closed and the
    folder unlocked); the folder may not overlap ``inputs``."""
    return Run(name, config, root=root, wandb_mode=wandb_mode, project=project, group=group, inputs=inputs)
