"""Genome <-> mergekit YAML: the searched recipe as a config that ``python -m cmaam.mergekit`` runs as is.

The YAML has one slice per decoder layer, and every tensor's coefficient is a ``{filter, value}``
entry naming the full tensor (a layer whose tensors share one value gets a single unfiltered entry).
Tensors outside the layers (embeddings, final norm, lm_head) are listed in the first and last slice,
where mergekit and cmaam.merging.config_merge look them up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from cmaam.core.errors import CMAAMError
from cmaam.search.genome import GenomeLayout, layer_index


def _entries(layout: GenomeLayout, genome: Sequence[float], names: Sequence[str], parameter: str,
             model: int | None) -> list[dict[str, Any]] | float:
    """The conditional entries of one parameter for ``names`` (a scalar when all values agree)."""

    def value(name: str) -> float:
        found = layout.parameters_for(genome, name)[parameter]
        return float(found if model is None else found[model])

    # longest names first, so no filter is a substring of a later tensor's name
    values = [(name, value(name)) for name in sorted(names, key=len, reverse=True)]
    outside = [(name, v) for name, v in values if layer_index(name) is None]
    inside = [(name, v) for name, v in values if layer_index(name) is not None]
    entries = [{"filter": name, "value": v} for name, v in outside]
    if inside and len({v for _, v in inside}) == 1:
        if not entries:
            return inside[0][1]
        entries.append({"value": inside[0][1]})
    else:
        entries += [{"filter": name, "value": v} for name, v in inside]
    return entries


def genome_to_mergekit(layout: GenomeLayout, genome: Sequence[float], model_paths: Mapping[str, str],
                       dtype: str | None = None, out_dtype: str | None = None) -> dict[str, Any]:
    """The mergekit config (as a dict ready for YAML) that merges exactly what ``genome`` describes.

    ``dtype`` is what inputs are read as (use the stored dtype to match the in-memory merge),
    ``out_dtype`` the written dtype when it differs.
    """
    layout.check_genome(genome)
    genome = layout.clip(genome)
    layers = sorted({index for name in layout.tensor_names if (index := layer_index(name)) is not None})
    if layers != list(range(len(layers))) or not layers:
        raise CMAAMError("genome: the model's decoder layers are not numbered 0..N-1; cannot write a mergekit config")
    outside = [name for name in layout.tensor_names if layer_index(name) is None]
    order = [layout.base_model, *layout.models]
    slerp = layout.spec.method == "slerp"
    slices = []
    for layer in layers:
        names = [name for name in layout.tensor_names if layer_index(name) == layer]
        if layer in (layers[0], layers[-1]):
            names = outside + names
        sources = [{"model": model_paths[model], "layer_range": [layer, layer + 1]} for model in order]
        entry: dict[str, Any] = {"sources": sources}
        if slerp:
            entry["parameters"] = {"t": _entries(layout, genome, names, "t", None)}
        else:
            for index, source in enumerate(sources[1:]):
                source["parameters"] = {parameter: _entries(layout, genome, names, parameter, index)
                                        for parameter in layout.spec.parameters}
        slices.append(entry)
    config: dict[str, Any] = {"merge_method": layout.spec.method, "base_model": model_paths[layout.base_model],
                              "slices": slices}
    if not slerp:
        parameters = {}
        if layout.spec.normalize is not None:
            parameters["normalize"] = bool(layout.spec.normalize)
        if float(layout.spec.lambda_) != 1.0:
            parameters["lambda"] = float(layout.spec.lambda_)
        if parameters:
            config["parameters"] = parameters
    if dtype:
        config["dtype"] = dtype
    if out_dtype and out_dtype != dtype:
        config["out_dtype"] = out_dtype
    return config


def genome_from_mergekit(layout: GenomeLayout, config_path: str | Path, model_paths: Mapping[str, str]) -> list[float]:
    """Read a genome back from a mergekit YAML over the same models (resolved with cmaam's planner).

    Raises CMAAMError when the YAML sets different values inside one genome unit (it is finer than the
    genome's granularity) or uses other models or another method.
    """
    from cmaam.merging.config_merge import open_readers
    from cmaam.merging.mergekit_config import load_merge_config
    from cmaam.merging.planner import plan_merge

    config = load_merge_config(config_path)
    if config.merge_method != layout.spec.method:
        raise CMAAMError(f"{config_path}: merge_method {config.merge_method} differs from the genome's "
                         f"{layout.spec.method}")
    readers = open_readers(config, Path(config_path).resolve().parent)
    by_path = {str(Path(path).resolve()): name for name, path in model_paths.items()}
    try:
        jobs = {job.output_name: job for job in plan_merge(config, readers).jobs}
        values: dict[tuple, float] = {}
        for name in layout.tensor_names:
            job = jobs.get(name)
            if job is None or job.merge is None:
                raise CMAAMError(f"{config_path}: no merge planned for tensor {name!r}")
            arguments = job.merge.keywords["parameters"]
            contributors = [by_path.get(str(readers[model].path.resolve())) for model, _ in job.inputs[1:]]
            for gene in layout.genes:
                if gene.unit != layout.unit_of[name]:
                    continue
                if gene.model is None:
                    value = float(arguments[gene.parameter])
                elif gene.model in contributors:
                    value = float(arguments[gene.parameter][contributors.index(gene.model)])
                else:
                    raise CMAAMError(f"{config_path}: model {gene.model!r} ({model_paths[gene.model]}) is not merged")
                key = (gene.unit, gene.parameter, gene.model)
                if key in values and abs(values[key] - value) > 1e-12:
                    raise CMAAMError(f"{config_path}: {gene.label} takes different values inside one "
                                     f"{layout.spec.granularity} unit; use a finer genome granularity")
                values[key] = value
    finally:
        for reader in readers.values():
            reader.close()
    return [values[(gene.unit, gene.parameter, gene.model)] for gene in layout.genes]
