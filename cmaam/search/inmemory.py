"""In-memory merging for the search: inputs read once onto the device, each candidate written into one
preallocated model in place. No checkpoint is written per candidate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch

from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader, parse_dtype
from cmaam.merging.executor import TensorJob, kernel_threads, plan_specs, resolve_device
from cmaam.core.errors import CMAAMError, load_errors
from cmaam.search.genome import GenomeLayout, GenomeSpec
from cmaam.merging.methods import MergeMethod, get_method
from cmaam.merging.planner import tensor_seed


def open_readers(models: Mapping[str, str | Path], allow_pickle: bool = False) -> dict[str, CheckpointReader]:
    """A lazy reader per model name (one-line errors for missing folders or pickled weights)."""
    return {name: CheckpointReader(path, allow_pickle=allow_pickle) for name, path in models.items()}


def plan_layout(readers: Mapping[str, CheckpointReader], base_model: str, spec: GenomeSpec) -> GenomeLayout:
    """Check that all models hold the same tensors with the same shapes; return the genome layout.

    Reads headers only, so bad inputs fail before any tensor is loaded or any candidate evaluated.
    """
    if base_model not in readers:
        raise CMAAMError(f"base_model {base_model!r} is not one of the models ({', '.join(readers)})")
    base = readers[base_model]
    others = [name for name in readers if name != base_model]
    for name in others:
        extra = sorted(set(readers[name].keys()) - set(base.keys()))
        if extra:
            raise CMAAMError(f"{readers[name].path}: {len(extra)} tensor(s) the base model lacks (first: {extra[0]!r})")
    order = [base_model, *others]
    jobs = [TensorJob(name, [(model, name) for model in order]) for name in base.keys()]
    specs = plan_specs(readers, jobs)
    floating = [spec.name for spec in specs if spec.dtype.is_floating_point]
    return GenomeLayout(spec, floating, others, base_model)


def method_arguments(method: MergeMethod, layout: GenomeLayout, genome: Sequence[float], name: str,
                     seed: int = 0) -> dict:
    """Keyword arguments of ``method`` for tensor ``name``: the genome's values plus the per-tensor dare
    seed that ``python -m cmaam.mergekit --seed`` derives, so the saved recipe reproduces the merge."""
    arguments = layout.parameters_for(genome, name)
    declared = {parameter.name for parameter in method.parameters}
    if "seed" in declared:
        arguments["seed"] = tensor_seed(int(seed), name)
    return {key: value for key, value in arguments.items() if key in declared}


def merge_tensor(method: MergeMethod, inputs: Sequence[torch.Tensor], arguments: Mapping) -> torch.Tensor:
    """Merge one tensor from ``[base, *others]`` in float32 (the engine's convention)."""
    values = [tensor.to(torch.float32) for tensor in inputs]
    return method(values[1:], base=values[0], **arguments)


def build_empty_model(path: str | Path, device: str, dtype: torch.dtype | None, trust_remote_code: bool = False,
                      vision: bool = False, **overrides):
    """A causal LM (an image-text-to-text model with ``vision``) with ``path``'s config (``overrides`` set on
    it) allocated on ``device``; its weights are left uninitialised for the caller to overwrite."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.initialization import no_init_weights

    with load_errors(path, "model config"):
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    for key, value in overrides.items():
        setattr(config, key, value)
    auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    with torch.device(device), no_init_weights():
        model = auto.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.eval()


def checkpoint_names(model, names: Sequence[str]) -> dict[str, str]:
    """Checkpoint tensor name -> the model's parameter name, renamed as ``from_pretrained`` renames them
    (transformers 5 keeps e.g. Qwen2-VL's ``model.embed_tokens`` on disk and ``model.language_model...`` in
    memory). Tensors that transformers converts (fuses, splits) cannot be merged one by one: an error."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, rename_source_key

    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    state = model.state_dict()
    mapping = {}
    for name in names:
        renamed, converted = rename_source_key(name, renamings, converters, model.base_model_prefix, state)
        if converted is not None:
            raise CMAAMError(f"{name}: transformers converts this tensor when loading ({converted}); the in-memory "
                             "merge handles renamed tensors only")
        mapping[name] = renamed
    return mapping


def checkpoint_targets(model, reader: CheckpointReader) -> dict[str, torch.Tensor]:
    """The model's tensors by checkpoint name; an error unless checkpoint and model cover each other exactly
    (tied weights count as covered)."""
    state = model.state_dict(keep_vars=True)
    names = checkpoint_names(model, reader.keys())
    missing = [name for name in reader.keys() if names[name] not in state]
    if missing:
        raise CMAAMError(f"{reader.path}: checkpoint tensor(s) not in the model built from its config "
                         f"(first: {missing[0]!r})")
    targets = {name: state[names[name]] for name in reader.keys()}
    covered = {tensor.data_ptr() for tensor in targets.values()}
    uncovered = [name for name, tensor in state.items() if tensor.data_ptr() not in covered]
    if uncovered:
        raise CMAAMError(f"{reader.path}: model tensor(s) missing from the checkpoint (first: {uncovered[0]!r})")
    return targets


def load_model(path: str | Path, device: str, dtype: torch.dtype | None = None, trust_remote_code: bool = False,
               allow_pickle: bool = False):
    """A causal LM loaded strictly from ``path`` onto ``device`` (dtype: as stored unless given)."""
    with CheckpointReader(path, allow_pickle=allow_pickle) as reader:
        floating = [name for name in reader.keys() if reader.dtype(name).is_floating_point]
        model = build_empty_model(path, device, dtype or reader.dtype(floating[0]), trust_remote_code)
        with torch.no_grad():
            for name, target in checkpoint_targets(model, reader).items():
                target.copy_(reader.get(name, device=device))
    return model


class InMemoryMerger:
    """Holds every input tensor on the device and merges a genome into one preallocated model in place."""

    def __init__(self, models: Mapping[str, str | Path], base_model: str, spec: GenomeSpec,
                 options: ExecutionOptions | None = None):
        """``options``: device, dtype of the in-memory model (default: as stored), the seed of dare masks,
        pickles and remote code."""
        options = options or ExecutionOptions()
        dtype, seed, trust_remote_code = parse_dtype(options.dtype), options.seed, options.trust_remote_code
        self.device = resolve_device(options.device)
        readers = open_readers(models, options.allow_pickle)
        self.layout = plan_layout(readers, base_model, spec)
        self.method = get_method(spec.method)
        self.seed = int(seed)
        self.base_path = Path(models[base_model])
        order = [base_model, *self.layout.models]
        base = readers[base_model]
        if dtype is None:
            dtype = base.dtype(self.layout.tensor_names[0])
        self.model = build_empty_model(self.base_path, self.device, dtype, trust_remote_code)
        self.targets: dict[str, torch.Tensor] = checkpoint_targets(self.model, base)
        floating = set(self.layout.tensor_names)
        self.inputs: dict[str, list[torch.Tensor]] = {}
        with torch.no_grad():
            for name in base.keys():
                if name in floating:
                    self.inputs[name] = [readers[model].get(name, device=self.device) for model in order]
                else:
                    self.targets[name].copy_(base.get(name, device=self.device))
        for reader in readers.values():
            reader.close()

    @torch.no_grad()
    def apply(self, genome: Sequence[float]) -> None:
        """Overwrite the model's parameters with the merge that ``genome`` describes (with the thread count of a
        written merge, ``kernel_threads``: sums inside slerp or TIES round by it, and the written recipe must
        give the same bytes)."""
        self.layout.check_genome(genome)
        genome = self.layout.clip(genome)
        with kernel_threads():
            for name in self.layout.tensor_names:
                arguments = method_arguments(self.method, self.layout, genome, name, self.seed)
                self.targets[name].copy_(merge_tensor(self.method, self.inputs[name], arguments))

    def state_items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(checkpoint name, current tensor) pairs in checkpoint order."""
        return iter(self.targets.items())
