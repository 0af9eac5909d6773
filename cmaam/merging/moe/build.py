"""Build a Mixture-of-Experts model from dense models, streaming: ``build_moe(config, output)``.

Attention, norms and embeddings come from the base model; each expert's MLPs from its source model, one
input tensor in memory at a time (stacked expert tensors are written piece by piece into their place in the
output file); the router from ``gates.gate_vectors``. Everything that can be wrong with the inputs (model
types, layer counts, tensor shapes, the output architecture) is checked before anything is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm import tqdm

from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader, CheckpointWriter, TensorSpec, parse_dtype
from cmaam.io.atomic import claim_output
from cmaam.merging.config_merge import resolve_model_path
from cmaam.merging.moe.architectures import MLP_PROJECTIONS, MoEArchitecture, Piece, select_architecture
from cmaam.merging.moe.config import PROMPT_MODES, MoEConfig, load_moe_config
from cmaam.merging.planner import tensor_seed

logger = logging.getLogger(__name__)
CONFIG_COPY = "mergekit_moe_config.yml"


def check_models(config: MoEConfig, readers: dict[str, CheckpointReader]) -> dict[str, str]:
    """One-line errors for experts of another architecture, layer count or MLP shape; returns model types."""
    base = readers[config.base_model]
    types = {}
    for reference, reader in readers.items():
        if not reader.model_type:
            raise CMAAMError(f"{reader.path}: config.json has no model_type")
        types[reference] = reader.model_type
    layers = base.config.get("num_hidden_layers")
    if not isinstance(layers, int) or layers < 1:
        raise CMAAMError(f"{base.path}: config.json has no num_hidden_layers")
    for where, expert in config.all_experts():
        reader = readers[expert.source_model]
        if types[expert.source_model] != types[config.base_model]:
            raise CMAAMError(f"{where} ({expert.source_model}) is a {types[expert.source_model]} model but the base "
                             f"model is {types[config.base_model]}: every expert must have the base's architecture")
        if reader.config.get("num_hidden_layers") != layers:
            raise CMAAMError(f"{where} ({expert.source_model}) has {reader.config.get('num_hidden_layers')} layers, "
                             f"the base model {layers}")
        for layer in range(layers):
            for projection in MLP_PROJECTIONS:
                name = f"model.layers.{layer}.mlp.{projection}.weight"
                if name not in base:
                    raise CMAAMError(f"{base.path}: no {name} (the base model needs a dense MLP in every layer)")
                if name not in reader:
                    raise CMAAMError(f"{where} ({expert.source_model}): no {name}")
                if reader.shape(name) != base.shape(name):
                    raise CMAAMError(f"{where} ({expert.source_model}): {name} has shape {reader.shape(name)}, the "
                                     f"base model's is {base.shape(name)}")
    return types


def output_dtype(config: MoEConfig, base: CheckpointReader) -> torch.dtype | None:
    """The config's ``dtype``, else the base model's config dtype (None: keep each tensor's)."""
    if config.dtype:
        try:
            return parse_dtype(config.dtype)
        except CMAAMError as error:
            raise CMAAMError(f"dtype: {error}") from None
    stored = base.config.get("dtype") or base.config.get("torch_dtype")
    try:
        return parse_dtype(stored) if isinstance(stored, str) else None
    except CMAAMError:
        return None


def _routers(config: MoEConfig, base_path: str, base: CheckpointReader, seed: int, device: str, progress: bool
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(layers, experts, hidden) router rows and (layers, shared, hidden) shared-expert gate rows."""
    from cmaam.merging.moe.gates import gate_vectors

    wanted = list(config.experts)
    if config.shared_experts and (any(e.positive_prompts for e in config.shared_experts)
                                  or config.gate_mode not in PROMPT_MODES):
        wanted += config.shared_experts
    gates = gate_vectors(config.gate_mode, base_path, base, wanted, seed=seed, device=device, progress=progress)
    return gates[:, :len(config.experts)], gates[:, len(config.experts):]


def _read(piece: Piece, readers: dict[str, CheckpointReader], seed: int, output_name: str) -> torch.Tensor:
    """An input tensor with its expert's noise_scale (seeded per output tensor and piece) and residual_scale."""
    tensor = readers[piece.model].get(piece.name)
    expert = piece.expert
    if expert is not None and expert.noise_scale:
        generator = torch.Generator().manual_seed(tensor_seed(seed, f"{output_name}@{piece.offset}"))
        tensor = tensor + torch.randn(tensor.shape, generator=generator, dtype=torch.float32).to(tensor.dtype) \
            * expert.noise_scale
    if expert is not None and piece.residual and expert.residual_scale is not None:
        tensor = tensor * expert.residual_scale
    return tensor


def build_moe(config: str | Path | MoEConfig, output: str | Path, options: ExecutionOptions | None = None, *,
              allow_identical_experts: bool = False) -> Path:
    """Write the MoE model of a mergekit-moe ``config`` to ``output`` (atomic; inputs never touched).

    ``options``: ``device`` runs the hidden-state router; ``dtype`` overrides the config's; ``seed`` seeds the
    random router modes and experts' ``noise_scale``; ``overwrite``, ``allow_pickle``, ``max_shard_size``,
    ``progress`` as for every command.
    """
    options = options or ExecutionOptions()
    options.validate()
    config_file = None
    if not isinstance(config, MoEConfig):
        config_file = Path(config)
        config = load_moe_config(config_file)
    config.check_distinct_experts(allow_identical_experts)
    folder = config_file.resolve().parent if config_file is not None else None
    paths = {reference: resolve_model_path(reference, folder) for reference in config.referenced_models()}
    inputs = [*paths.values(), *([config_file] if config_file is not None else [])]
    with claim_output(output, inputs=inputs, overwrite=options.overwrite):
        readers = {reference: CheckpointReader(path, allow_pickle=options.allow_pickle)
                   for reference, path in paths.items()}
        try:
            return _build(config, output, readers, paths, options)
        finally:
            for reader in readers.values():
                reader.close()


def _build(config: MoEConfig, output: str | Path, readers: dict[str, CheckpointReader], paths: dict[str, Path],
           options: ExecutionOptions) -> Path:
    from transformers import AutoConfig

    from cmaam.merging.executor import resolve_device

    base = readers[config.base_model]
    dtype = parse_dtype(options.dtype) or output_dtype(config, base)
    architecture: MoEArchitecture = select_architecture(config, check_models(config, readers))
    logger.info("output architecture: %s", architecture.name)
    routers, shared_routers = _routers(config, str(paths[config.base_model]), base, options.seed,
                                       resolve_device(options.device), options.progress)
    layout = architecture.layout(config, readers, routers, shared_routers,
                                 AutoConfig.from_pretrained(paths[config.base_model]))
    specs = []
    computed = base.dtype(base.keys()[0])  # computed tensors (routers, zero biases) without a config dtype
    for tensor in layout.tensors:
        stored = base.dtype(tensor.pieces[0].name) if tensor.pieces else computed
        specs.append(TensorSpec(tensor.name, tensor.shape, dtype if dtype is not None else stored))
    with CheckpointWriter(output, specs, reference=paths[config.base_model], config=layout.config,
                          max_shard_size=options.max_shard_size, overwrite=options.overwrite,
                          inputs=[path for reader in readers.values() for path in (reader.path, *reader.files)]
                          ) as writer:
        for tensor in tqdm(layout.tensors, desc=f"{architecture.name} model", unit="tensor",
                           disable=not options.progress, leave=False):
            if tensor.make is not None:
                writer.add(tensor.name, tensor.make())
                continue
            for piece in tensor.pieces:
                value = _read(piece, readers, options.seed, tensor.name)
                if len(tensor.pieces) == 1:
                    writer.add(tensor.name, value)
                else:
                    writer.add_part(tensor.name, value, piece.offset)
                del value
        if config.text:
            (writer.folder / CONFIG_COPY).write_text(config.text, encoding="utf-8")
    return Path(output)
