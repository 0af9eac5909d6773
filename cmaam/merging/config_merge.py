"""Run a mergekit YAML config as is, streaming tensor by tensor: ``python -m cmaam.mergekit CONFIG.yaml OUT``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from cmaam.core.errors import CMAAMError
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


def resolve_exists(reference: str, config_folder: Path | None) -> bool:
    """True when ``reference`` names an existing path (as given, or relative to the config's folder)."""
    path = Path(reference).expanduser()
    return path.exists() or (config_folder is not None and not path.is_absolute() and (config_folder / path).exists())


def split_lora_reference(reference: str, config_folder: Path | None) -> tuple[str, str | None]:
    """mergekit's ``BASE+LORA`` model syntax: (base, adapter) when ``reference`` names no path itself and
    contains a '+', else (reference, None)."""
    if "+" not in reference or resolve_exists(reference, config_folder):
        return reference, None
    base, adapter = reference.split("+", 1)
    return base, adapter


def model_inputs(reference: str, config_folder: Path | None) -> list[Path]:
    """The folders a model string of the YAML reads (base and adapter for ``BASE+LORA``)."""
    return [resolve_model_path(part, config_folder)
            for part in split_lora_reference(reference, config_folder) if part is not None]


def open_readers(config: MergekitConfig, config_folder: Path | None, allow_pickle: bool = False,
                 adapter_base: str | Path | None = None) -> dict[str, CheckpointReader]:
    """One lazy reader per model referenced by the config, keyed by the string used in the YAML.

    A model may be a peft LoRA adapter folder (its base from adapter_config.json, else ``adapter_base``) or
    mergekit's ``BASE+LORA``.
    """
    from cmaam.io.adapters import open_model

    readers = {}
    for reference in config.referenced_models():
        base, adapter = split_lora_reference(reference, config_folder)
        if adapter is None:
            readers[reference] = open_model(resolve_model_path(reference, config_folder), allow_pickle, adapter_base)
        else:
            readers[reference] = open_model(resolve_model_path(adapter, config_folder), allow_pickle,
                                            resolve_model_path(base, config_folder))
    return readers


def merge_from_config(config: str | Path | MergekitConfig, output: str | Path,
                      options: ExecutionOptions | None = None,
                      mapper: Callable[[CheckpointReader, CheckpointReader], CheckpointReader] | None = None) -> Path:
    """Merge the models of a mergekit config into ``output`` (atomic; one tensor per input in memory).

    ``options.dtype`` (the CLI's --dtype) overrides the config's ``out_dtype``/``dtype`` for the written
    tensors; ``options.seed`` seeds the random methods (dare_*), per tensor. The config text is saved as
    ``mergekit_config.yml`` beside the weights. ``mapper(model, reference)`` may return a model seen in the
    reference's layout (``cmaam.alignment.mapping.mapped_source``: models of other types); the reference is
    the base model, else the first model, as for the output config.
    """
    options = options or ExecutionOptions()
    options.validate()
    config_folder = None
    config_file = None
    if not isinstance(config, MergekitConfig):
        config_file = Path(config)
        config_folder = config_file.resolve().parent
        config = load_merge_config(config)
    inputs = [path for reference in config.referenced_models() for path in model_inputs(reference, config_folder)]
    if config_file is not None:
        inputs.append(config_file)
    with claim_output(output, inputs=inputs, overwrite=options.overwrite):  # before any work: refused or locked
        return _merge(config, config_folder, output, options, mapper)


def _merge(config: MergekitConfig, config_folder: Path | None, output: str | Path, options: ExecutionOptions,
           mapper: Callable[[CheckpointReader, CheckpointReader], CheckpointReader] | None = None) -> Path:
    from cmaam.merging.executor import run_merge
    from cmaam.merging.mapped import keep_target_parts
    from cmaam.merging.planner import plan_merge

    readers = open_readers(config, config_folder, options.allow_pickle, options.adapter_base)
    try:
        reference = config.referenced_models()[0]
        if mapper is not None:
            readers = {key: reader if key == reference else mapper(reader, readers[reference])
                       for key, reader in readers.items()}
        plan = plan_merge(config, readers, seed=options.seed, dtype=options.dtype)
        jobs = keep_target_parts(plan.jobs, readers, plan.reference)

        def save_config(folder: Path) -> None:
            if config.text:
                (folder / "mergekit_config.yml").write_text(config.text, encoding="utf-8")

        return run_merge(readers, jobs, output, dataclasses.replace(options, dtype=plan.dtype),
                         reference=readers[plan.reference].reference_folder, config=plan.config,
                         description=f"{config.merge_method} merge", before_commit=save_config)
    except CMAAMError as error:
        types = sorted({str(reader.model_type) for reader in readers.values()})
        if mapper is None and len(types) > 1:  # a text LLM with a VLM, say: name the way out
            raise CMAAMError(f"{error} (models of different types: {', '.join(types)}; --map auto merges them over "
                             "the mapping of their layouts, see docs/cross_model.md)") from None
        raise
    finally:
        for reader in readers.values():
            reader.close()
