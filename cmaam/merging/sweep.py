"""``python -m cmaam.sweep``: linear-alpha baselines, one merged model per alpha from a single read of S and T."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from pathlib import Path
from typing import Callable, Sequence


from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader, CheckpointWriter, parse_dtype
from cmaam.io.adapters import open_model
from cmaam.io.atomic import atomic_write_yaml, claim_outputs
from cmaam.merging.executor import ModelOutput, execute, plan_specs, resolve_device
from cmaam.merging.mapped import KeepTargetRows
from cmaam.merging.pairs import ALPHAS_FILE, check_interp, check_pair, interpolate, pair_jobs, report_unmatched

logger = logging.getLogger(__name__)


def parse_alphas(text: str | Sequence[float]) -> list[float]:
    """'0.3,0.5,0.7' (or a list) -> distinct alphas in [0, 1], in the given order."""
    parts = [p for p in (text.split(",") if isinstance(text, str) else text) if str(p).strip()]
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise CMAAMError(f"--alphas: {part!r} is not a number (write e.g. 0.3,0.5,0.7)") from None
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise CMAAMError(f"--alphas: {part} is outside [0, 1]")
        values.append(value)
    if not values:
        raise CMAAMError("--alphas: give at least one alpha (e.g. 0.3,0.5,0.7)")
    if len(set(values)) != len(values):
        raise CMAAMError(f"--alphas: repeated value in {', '.join(map(str, parts))}")
    return values


def sweep_output(output_dir: str | Path, alpha: float) -> Path:
    """Folder of one sweep point: OUTPUT_DIR/alpha_<alpha>."""
    return Path(output_dir) / f"alpha_{alpha:g}"


def _write_settings(folder: Path, settings: dict) -> None:
    atomic_write_yaml(folder / ALPHAS_FILE, {"settings": settings})


def sweep(source: str | Path, target: str | Path, output_dir: str | Path, alphas: str | Sequence[float],
          options: ExecutionOptions | None = None, *, interp: str = "linear",
          mapper: Callable[[CheckpointReader, CheckpointReader], CheckpointReader] | None = None) -> list[Path]:
    """Write (1 - a) * T + a * S (or slerp) for every alpha a, reading each input tensor once for all of them.

    ``options``: device, output dtype, overwrite, pickles, NaN/Inf check, shard size, progress. Each
    output is its own atomic writer; tensors only in the target (or not floating) are copied. S or T may be a
    peft LoRA adapter folder. ``mapper(source, target)`` may return the source seen in the target's layout
    (``cmaam.alignment.mapping.layout_mapper``: models of different types); the target's own vocabulary rows are
    then kept exactly.
    """
    options = options or ExecutionOptions()
    overwrite, allow_pickle, max_shard_size = options.overwrite, options.allow_pickle, options.max_shard_size
    values = parse_alphas(alphas)
    check_interp(interp)
    dtype = parse_dtype(options.dtype)
    resolve_device(options.device)  # an unknown or missing device fails before any work
    outputs = [sweep_output(output_dir, value) for value in values]
    # Every output is checked and locked before any work; a failure removes the folders this run created.
    with claim_outputs(outputs, inputs=[source, target], overwrite=overwrite):
        source_reader = open_model(source, allow_pickle, options.adapter_base)
        target_reader = open_model(target, allow_pickle, options.adapter_base)
        if mapper is not None:
            source_reader = mapper(source_reader, target_reader)
        readers = {"target": target_reader, "source": source_reader}
        common = check_pair(source_reader, target_reader)
        floating = [name for name in common if target_reader.dtype(name).is_floating_point]
        report_unmatched([n for n in target_reader.keys() if n not in source_reader],
                         getattr(source_reader, "source_only", None) or
                         [n for n in source_reader.keys() if n not in target_reader],
                         [n for n in common if n not in set(floating)], ALPHAS_FILE)
        jobs = pair_jobs(target_reader, dict.fromkeys(floating, 0.0), interp)  # each output merges at its alpha
        specs = plan_specs(readers, jobs, dtype)
        with contextlib.ExitStack() as stack:
            writers = [stack.enter_context(CheckpointWriter(output, specs, reference=target_reader.reference_folder,
                                                            max_shard_size=max_shard_size, overwrite=overwrite,
                                                            inputs=[source, target, *target_reader.files,
                                                                    *source_reader.files]))
                       for output in outputs]
            linear = interp == "linear"  # a lerp: row by row, NaN/Inf in an input reaches every output
            consumers = [KeepTargetRows(ModelOutput(
                writer, functools.partial(interpolate, alpha=value, interp=interp), label=f" (alpha {value:g})",
                row_local=linear, propagates_nonfinite=linear,
                before_commit=functools.partial(_write_settings, settings={
                    "source": str(source), "target": str(target), "interp": interp, "alpha": value})),
                readers, "target") for writer, value in zip(writers, values)]
            execute(readers, jobs, consumers, options, description=f"sweeping {len(values)} alphas")
    for output in outputs:
        logger.info("wrote %s", output)
    return outputs
