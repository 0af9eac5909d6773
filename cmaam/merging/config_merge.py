"""Run a mergekit YAML config as is, streaming tensor by tensor: ``python -m cmaam.mergekit CONFIG.yaml OUT``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from cmaam.core.options import ExecutionOptions
from cmaam.io.atomic import claim_output
from cmaam.merging.mergekit_config import MergekitConfig, load_merge_config

if TYPE_CHECKING:
    from cmaam.io import CheckpointReader

# torch-backed modules are imported inside the functions so that config and path mistakes are
# reported before the ~2 s torch import.


def resolve_model_path(reference: str, config_folder: Path | None) -> Path:
    """A model string of the YAML as a local folder: as given (relative to the working folder), else
    relative to the config file's folder. Hub ids are not downloaded."""
    path = Path(reference).expanduser()
    if not path.exists() and not path.is_absolute() and config_folder is not None and (config_folder / path).exists():
        return config_folder / path
    if not path.exists():
        from cmaam.io.locate import local_model_path

        return local_model_path(reference, "model")
    return path


def open_readers(config: MergekitConfig, config_folder: Path | None, allow_pickle: bool = False
                 ) -> dict[str, CheckpointReader]:
    """One lazy reader per model referenced by the config, keyed by the string used in the YAML."""
    from cmaam.io import CheckpointReader

    return {reference: CheckpointReader(resolve_model_path(reference, config_folder), allow_pickle=allow_pickle)
            for reference in config.referenced_models()}


def merge_from_config(config: str | Path | MergekitConfig, output: str | Path,
                      options: ExecutionOptions | None = None) -> Path:
    """Merge the models of a mergekit config into ``output`` (atomic; one tensor per input in memory).

    ``options.dtype`` (the CLI's --dtype) overrides the config's ``out_dtype``/``dtype`` for the written
    tensors; ``options.seed`` seeds the random methods (dare_*), per tensor. The config text is saved as
    ``mergekit_config.yml`` beside the weights.
    """
    options = options or ExecutionOptions()
    options.validate()
    config_folder = None
    config_file = None
    if not isinstance(config, MergekitConfig):
        config_file = Path(config)
        config_folder = config_file.resolve().parent
        config = load_merge_config(config)
    inputs = [resolve_model_path(reference, config_folder) for reference in config.referenced_models()]
    if config_file is not None:
        inputs.append(config_file)
    with claim_output(output, inputs=inputs, overwrite=options.overwrite):  # before any work: refused or locked
        return _merge(config, config_folder, output, options)


def _merge(config: MergekitConfig, config_folder: Path | None, output: str | Path, options: ExecutionOptions) -> Path:
    from cmaam.merging.executor import run_merge
    from cmaam.merging.planner import plan_merge

    readers = open_readers(config, config_folder, options.allow_pickle)
    try:
        plan = plan_merge(config, readers, seed=options.seed, dtype=options.dtype)
        jobs = plan.jobs

        def save_config(folder: Path) -> None:
            if config.text:
                (folder / "mergekit_config.yml").write_text(config.text, encoding="utf-8")

        return run_merge(readers, jobs, output, dataclasses.replace(options, dtype=plan.dtype),
                         reference=readers[plan.reference].path, config=plan.config,
                         description=f"{config.merge_method} merge", before_commit=save_config)
    finally:
        for reader in readers.values():
            reader.close()
