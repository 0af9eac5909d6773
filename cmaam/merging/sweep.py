"""``python -m cmaam.sweep``: linear-alpha baselines, one merged model per alpha from a single read of S and T."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from cmaam.alignment.merge import (
    ALPHAS_FILE,
    check_interp,
    interpolate,
    pair_jobs,
    report_unmatched,
)
from cmaam.alignment.mapping import AUTO, mapped_source
from cmaam.alignment.scores.analyzer import check_pair
from cmaam.core.errors import CMAAMError
from cmaam.io import CheckpointWriter, parse_dtype
from cmaam.io.adapters import open_model
from cmaam.io.atomic import atomic_write_yaml, claim_outputs
from cmaam.merging.executor import check_finite, plan_specs, resolve_device
from cmaam.merging.mapped import kept_rows


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


def sweep(source: str | Path, target: str | Path, output_dir: str | Path, alphas: str | Sequence[float],
          interp: str = "linear", dtype: str | torch.dtype | None = None, device: str = "auto",
          overwrite: bool = False, allow_pickle: bool = False, allow_nonfinite: bool = False,
          max_shard_size: str | int = "5GB", progress: bool = True,
          adapter_base: str | Path | None = None, map_spec: str | Path = AUTO) -> list[Path]:
    """Write (1 - a) * T + a * S (or slerp) for every alpha a, reading each input tensor once for all of them.

    Each output is its own atomic writer; tensors only in the target (or not floating) are copied. Models of
    different types merge over the pairs of ``map_spec`` (see ``cmaam.alignment.mapping``).
    """
    values = parse_alphas(alphas)
    check_interp(interp)
    dtype = parse_dtype(dtype)
    device = resolve_device(device)
    outputs = [sweep_output(output_dir, value) for value in values]
    # Every output is checked and locked before any work; a failure removes the folders this run created.
    with claim_outputs(outputs, inputs=[source, target, None if str(map_spec) == AUTO else map_spec],
                       overwrite=overwrite):
        source_reader = open_model(source, allow_pickle=allow_pickle, adapter_base=adapter_base)
        target_reader = open_model(target, allow_pickle=allow_pickle, adapter_base=adapter_base)
        source_reader, mapping = mapped_source(source_reader, target_reader, map_spec)
        if mapping is not None:
            print(mapping.table())
        readers = {"target": target_reader, "source": source_reader}
        common = check_pair(source_reader, target_reader)
        floating = [name for name in common if target_reader.dtype(name).is_floating_point]
        report_unmatched([n for n in target_reader.keys() if n not in source_reader],
                         mapping.source_only if mapping is not None else
                         [n for n in source_reader.keys() if n not in target_reader],
                         [n for n in common if n not in set(floating)], ALPHAS_FILE)
        jobs = pair_jobs(target_reader, dict.fromkeys(floating, 0.0), interp)
        specs = plan_specs(readers, jobs, dtype)
        with contextlib.ExitStack() as stack:
            writers = [stack.enter_context(CheckpointWriter(output, specs, reference=target_reader.reference_folder,
                                                            max_shard_size=max_shard_size, overwrite=overwrite,
                                                            inputs=[source, target, *target_reader.files,
                                                                    *source_reader.files]))
                       for output in outputs]
            for job in tqdm(jobs, desc=f"sweeping {len(values)} alphas", unit="tensor", disable=not progress,
                            leave=False):
                tensors = [readers[model].get(name, device=device) for model, name in job.inputs]
                if not allow_nonfinite:
                    for (model, name), tensor in zip(job.inputs, tensors):
                        check_finite(tensor, f"{readers[model].path}: {name}")
                if len(tensors) == 1 or not tensors[0].is_floating_point():
                    for writer in writers:
                        writer.add(job.output_name, tensors[0])
                    continue
                tensors = [tensor.float() for tensor in tensors]
                rows = kept_rows(readers, job)
                for writer, value in zip(writers, values):
                    merged = interpolate(tensors, value, interp)
                    if rows is not None:  # vocabulary rows only the target has stay the target's
                        merged[rows] = tensors[0][rows]
                    if not allow_nonfinite:
                        check_finite(merged, f"merged {job.output_name} (alpha {value:g})")
                    writer.add(job.output_name, merged)
            for writer, value in zip(writers, values):
                atomic_write_yaml(writer.folder / ALPHAS_FILE, {"settings": {
                    "source": str(source), "target": str(target), "interp": interp, "alpha": value}})
    for output in outputs:
        print(f"wrote {output}")
    return outputs
