"""Run a mergekit YAML config as is, streaming tensor by tensor: ``python -m cmaam.mergekit CONFIG.yaml OUT``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cmaam.io.atomic import claim_output
from cmaam.merging.mergekit_config import MergeConfig, load_merge_config

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


def open_readers(config: MergeConfig, config_folder: Path | None, allow_pickle: bool = False
                 ) -> dict[str, CheckpointReader]:
    """One lazy reader per model referenced by the config, keyed by the string used in the YAML."""
    from cmaam.io import CheckpointReader

    return {reference: CheckpointReader(resolve_model_path(reference, config_folder), allow_pickle=allow_pickle)
            for reference in config.referenced_models()}


def merge_from_config(
    config: str | Path | MergeConfig,
    output: str | Path,
    *,
    device: str = "cpu",
    dtype: str | None = None,
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Merge the models of a mergekit config into ``output`` (atomic; one tensor per input in memory).

    ``dtype`` (the CLI's --dtype) overrides the config's ``out_dtype``/``dtype`` for the written tensors.
    The config text is saved as ``mergekit_config.yml`` beside the weights.
    """
    config_folder = None
    config_file = None
    if not isinstance(config, MergeConfig):
        config_file = Path(config)
        config_folder = config_file.resolve().parent
        config = load_merge_config(config)
    inputs = [resolve_model_path(reference, config_folder) for reference in config.referenced_models()]
    if config_file is not None:
        inputs.append(config_file)
    with claim_output(output, inputs=inputs, overwrite=overwrite):  # before any work: refused or locked
        return _merge(config, config_folder, output, device=device, dtype=dtype, max_shard_size=max_shard_size,
                      overwrite=overwrite, allow_pickle=allow_pickle, allow_nonfinite=allow_nonfinite, seed=seed,
                      progress=progress)


def _merge(config: MergeConfig, config_folder: Path | None, output: str | Path, *, device: str, dtype: str | None,
           max_shard_size: str | int, overwrite: bool, allow_pickle: bool, allow_nonfinite: bool, seed: int,
           progress: bool) -> Path:
    from cmaam.merging.executor import run_merge
    from cmaam.merging.planner import plan_merge

    readers = open_readers(config, config_folder, allow_pickle)
    try:
        plan = plan_merge(config, readers, seed=seed, dtype=dtype)

        def save_config(folder: Path) -> None:
            if config.text:
                (folder / "mergekit_config.yml").write_text(config.text, encoding="utf-8")

        return run_merge(readers, plan.jobs, output, reference=readers[plan.reference].path, config=plan.config,
                         dtype=plan.dtype, device=device, allow_nonfinite=allow_nonfinite, overwrite=overwrite,
                         max_shard_size=max_shard_size, progress=progress,
                         description=f"{config.merge_method} merge", before_commit=save_config)
    finally:
        for reader in readers.values():
            reader.close()
