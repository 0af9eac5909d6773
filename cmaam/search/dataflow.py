"""Data-flow-space (DFS) search: the inference path is a sequence of decoder layers drawn from the models.

As in Akiba et al. (Evolutionary Optimization of Model Merging Recipes, Nature Machine Intelligence
2025): the layers of all models are laid out in pool order (every layer of the first model, then of
the second, ...) and the pool is repeated ``repeats`` times; slot t of these T = L x repeats slots
(L = all layers of all models) is on the path when its include gene I_t > 0. Each step scales its
input: with ``scaling: transition`` by W[i, j] (Sakana's W; i is the previous layer, or the
embeddings for the first step, j the layer itself), with ``scaling: step`` by one gene per slot.
The genome is [I_0 .. I_(T-1), scale genes] and CMA-ES optimises it like any other.

Embeddings come from the model of the first step, the final norm and LM head from the model of the
last step: mergekit's passthrough convention, so the saved recipe rebuilds exactly the evaluated model.
A parameter-space merge is simply one more model in the pool (the PS+DFS hybrid).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from cmaam.core.config import InvalidValue, at_least, one_of, setting
from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.search.genome import LayoutBase

SCALINGS = ("transition", "step", "none")
STARTS = ("base", "all")
INCLUDE_BOUNDS = (-1.0, 1.0)
# config keys that must agree for layers of different models to be stacked into one model
SHARED_CONFIG_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                      "head_dim", "vocab_size", "hidden_act", "rms_norm_eps", "rope_theta", "rope_scaling",
                      "rope_parameters", "attention_bias", "mlp_bias")


@dataclass
class DataFlowSpec:
    """The data-flow genome (an evolve config's ``dataflow`` section): slots (pool x repeats), how inputs are
    scaled, the start and the step size."""

    repeats: int = setting(1, check=at_least(1))
    scaling: str = setting("transition", check=one_of(SCALINGS))  # W[previous layer, layer] | one per slot | none
    start: str = setting("base", check=one_of(STARTS))  # base: the base model's layers | all: every layer once
    include_init: float = 0.2  # |I_t| at the start: 2 sigma away from the include threshold 0
    scale_init: float = 1.0
    scale_bounds: tuple[float, float] = (0.1, 2.0)
    sigma: float = 0.1

    def validate(self) -> None:
        """What involves several keys (positive scale bounds around the start) and open ranges."""
        low, high = self.scale_bounds
        if not 0 < low < high:
            raise InvalidValue("scale_bounds", f"must satisfy 0 < low < high (positive scales keep the fold rules "
                                               f"valid), got [{low}, {high}]")
        if not low <= float(self.scale_init) <= high:
            raise InvalidValue("scale_init", f"{self.scale_init} is outside scale_bounds [{low}, {high}]")
        if not 0 < float(self.include_init) <= INCLUDE_BOUNDS[1]:
            raise InvalidValue("include_init", f"must be in (0, 1], got {self.include_init}")
        if not float(self.sigma) > 0:
            raise InvalidValue("sigma", f"must be positive, got {self.sigma}")


@dataclass(frozen=True)
class Step:
    """One step of the inference path: decoder layer ``layer`` of ``model``, its input scaled by ``scale``."""

    model: str
    layer: int
    scale: float = 1.0
    slot: int = 0


class DataFlowLayout(LayoutBase):
    """The map between a flat DFS genome and an inference path over ``layer_counts`` (model -> layers).

    ``models`` is the pool order; ``base_model`` is the path the search starts from (``start: base``).
    """

    def __init__(self, spec: DataFlowSpec, layer_counts: Mapping[str, int], base_model: str):
        try:
            spec.validate()
        except InvalidValue as error:
            raise CMAAMError(f"dataflow.{error}") from None
        if base_model not in layer_counts:
            raise CMAAMError(f"dataflow: base_model {base_model!r} is not one of the models")
        self.spec = spec
        self.models = list(layer_counts)
        self.layer_counts = dict(layer_counts)
        self.base_model = base_model
        self.pool: list[tuple[str, int]] = [(model, layer) for model in self.models
                                            for layer in range(self.layer_counts[model])]
        self.slots: list[tuple[str, int]] = self.pool * spec.repeats
        self._column = {entry: index for index, entry in enumerate(self.pool)}
        self.labels: list[str] = [f"include[{t}]:{model}.{layer}" for t, (model, layer) in enumerate(self.slots)]
        if spec.scaling == "transition":
            sources = ["embed"] + [f"{model}.{layer}" for model, layer in self.pool]
            self.labels += [f"scale[{source}->{model}.{layer}]" for source in sources for model, layer in self.pool]
        elif spec.scaling == "step":
            self.labels += [f"scale[{t}]:{model}.{layer}" for t, (model, layer) in enumerate(self.slots)]

    # -- the genome interface the search loop uses (as GenomeLayout) -----------------------------
    @property
    def scale_genes(self) -> int:
        return len(self.labels) - len(self.slots)

    def bounds(self) -> tuple[list[float], list[float]]:
        """Lower and upper bound of every gene: include genes in [-1, 1], scales in ``scale_bounds``."""
        low, high = self.spec.scale_bounds
        return ([INCLUDE_BOUNDS[0]] * len(self.slots) + [low] * self.scale_genes,
                [INCLUDE_BOUNDS[1]] * len(self.slots) + [high] * self.scale_genes)

    def initial(self) -> list[float]:
        """Include genes at +/- include_init (the base model's layers, or every layer once), scales at scale_init."""
        margin = float(self.spec.include_init)
        pool = len(self.pool)
        if self.spec.start == "base":
            include = [margin if t < pool and model == self.base_model else -margin
                       for t, (model, _) in enumerate(self.slots)]
        else:
            include = [margin if t < pool else -margin for t in range(len(self.slots))]
        return include + [float(self.spec.scale_init)] * self.scale_genes

    def check_genome(self, genome: Sequence[float], where: str = "genome") -> None:
        """Raise CMAAMError unless ``genome`` has exactly one value per gene."""
        if len(genome) != len(self.labels):
            raise CMAAMError(f"{where} has {len(genome)} values but this data-flow genome needs {len(self.labels)} "
                             f"({len(self.slots)} include genes + {self.scale_genes} {self.spec.scaling} scales)")

    def describe(self) -> dict:
        """What identifies the genome (for the resume fingerprint)."""
        return {"space": "dataflow", "dataflow": asdict(self.spec), "layers": self.layer_counts}

    # -- decoding ----------------------------------------------------------------------------------
    def decode(self, genome: Sequence[float]) -> list[Step]:
        """The inference path: slots with I_t > 0 in order, each with its input scale.

        An empty path is not a model: then the slot with the largest include gene is used alone.
        """
        self.check_genome(genome)
        genome = self.clip(genome)
        count = len(self.slots)
        included = [t for t in range(count) if genome[t] > 0]
        if not included:
            included = [max(range(count), key=lambda t: (genome[t], -t))]
        scales = genome[count:]
        columns = len(self.pool)
        steps = []
        previous = None
        for t in included:
            model, layer = self.slots[t]
            if self.spec.scaling == "transition":
                row = 0 if previous is None else 1 + self._column[previous]
                scale = scales[row * columns + self._column[(model, layer)]]
            elif self.spec.scaling == "step":
                scale = scales[t]
            else:
                scale = 1.0
            steps.append(Step(model, layer, float(scale), t))
            previous = (model, layer)
        return steps

    def cache_key(self, genome: Sequence[float]) -> tuple:
        """Genomes that decode to the same path and scales share one evaluation."""
        return tuple((step.model, step.layer, round(step.scale, 10) + 0.0) for step in self.decode(genome))


def path_table(steps: Sequence[Step]) -> list[dict]:
    """The path as plain rows (for best_genome.json and reports)."""
    return [{"step": index, "model": step.model, "layer": step.layer, "scale": step.scale, "slot": step.slot}
            for index, step in enumerate(steps)]


# -- planning from checkpoint headers ----------------------------------------------------------------
def _text_config(config: Mapping, path: Path) -> Mapping:
    if "vision_config" in config or "text_config" in config:
        raise CMAAMError(f"{path}: the data-flow search stacks decoder layers of causal LMs; this is a "
                         "vision-language model (use the parameter-space search for VLMs)")
    return config


def plan_dataflow(readers: Mapping[str, Any], base_model: str, spec: DataFlowSpec) -> DataFlowLayout:
    """Check that the models' layers can be stacked (one architecture, same shapes); return the layout.

    Reads config files and headers only; layer counts may differ between models.
    """
    from cmaam.merging.planner import main_stack

    if base_model not in readers:
        raise CMAAMError(f"base_model {base_model!r} is not one of the models ({', '.join(readers)})")
    configs = {name: _text_config(reader.config, reader.path) for name, reader in readers.items()}
    reference = configs[base_model]
    for name, config in configs.items():
        for key in SHARED_CONFIG_KEYS:
            if config.get(key) != reference.get(key):
                raise CMAAMError(f"dataflow: models {base_model} and {name} differ in {key} "
                                 f"({reference.get(key)!r} vs {config.get(key)!r}); only layers of one "
                                 "architecture can be stacked")
    base = readers[base_model]
    for name, reader in readers.items():
        for tensor in reader.keys():
            if tensor in base and reader.shape(tensor) != base.shape(tensor):
                raise CMAAMError(f"dataflow: {name} and {base_model} differ in the shape of {tensor} "
                                 f"({list(reader.shape(tensor))} vs {list(base.shape(tensor))})")
    counts = {name: main_stack(reader).count for name, reader in readers.items()}
    return DataFlowLayout(spec, counts, base_model)


# -- the in-memory path model ------------------------------------------------------------------------
class PathStep(torch.nn.Module):
    """A decoder layer at position ``index`` of the path, its input scaled by ``scale``.

    The layer module is shared with its source model (never copied). A layer may appear at several
    positions, so the attention's ``layer_idx`` (its KV-cache slot) is set to this position right before
    each call; evaluation is sequential, so this is safe.
    """

    def __init__(self, layer: torch.nn.Module, index: int, scale: float):
        super().__init__()
        self.layer = layer
        self.index = index
        self.scale = float(scale)
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type
        self._indexed = [module for module in layer.modules() if hasattr(module, "layer_idx")]

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        for module in self._indexed:
            module.layer_idx = self.index
        if self.scale != 1.0:
            hidden_states = hidden_states * self.scale
        return self.layer(hidden_states, *args, **kwargs)


class DataFlowMerger:
    """Holds every source model on the device; ``apply(genome)`` rewires one shell model to the decoded path.

    Nothing is copied per candidate: the shell's layer list, embeddings, final norm and LM head are
    references to the sources' modules (the same interface as InMemoryMerger for the fitness).
    """

    def __init__(self, models: Mapping[str, str | Path], base_model: str, spec: DataFlowSpec,
                 options: ExecutionOptions | None = None):
        """``options``: device, dtype of the loaded models (default: as stored), pickles and remote code."""
        from cmaam.io import parse_dtype
        from cmaam.merging.executor import resolve_device
        from cmaam.search.inmemory import build_empty_model, load_model, open_readers

        options = options or ExecutionOptions()
        dtype, trust_remote_code, allow_pickle = parse_dtype(options.dtype), options.trust_remote_code, \
            options.allow_pickle
        self.device = resolve_device(options.device)
        readers = open_readers(models, allow_pickle)
        try:
            self.layout = plan_dataflow(readers, base_model, spec)
            configs = {name: dict(reader.config) for name, reader in readers.items()}
        finally:
            for reader in readers.values():
                reader.close()
        self.base_path = Path(models[base_model])
        self.sources = {name: load_model(path, self.device, dtype, trust_remote_code, allow_pickle)
                        for name, path in models.items()}
        self.layer_types = {name: config.get("layer_types") for name, config in configs.items()}
        dtype = next(self.sources[base_model].parameters()).dtype
        self.model = build_empty_model(self.base_path, self.device, dtype, trust_remote_code, num_hidden_layers=0)
        for module in self.sources.values():
            module.requires_grad_(False)
        self.steps: list[Step] = []

    @torch.no_grad()
    def apply(self, genome: Sequence[float]) -> list[Step]:
        """Point the shell model at the path ``genome`` decodes to; returns the path."""
        steps = self.layout.decode(genome)
        inner = self.model.model
        inner.layers = torch.nn.ModuleList(
            [PathStep(self.sources[s.model].model.layers[s.layer], index, s.scale) for index, s in enumerate(steps)])
        inner.embed_tokens = self.sources[steps[0].model].model.embed_tokens
        inner.norm = self.sources[steps[-1].model].model.norm
        self.model.lm_head = self.sources[steps[-1].model].lm_head
        self.model.config.num_hidden_layers = len(steps)
        if any(types is not None for types in self.layer_types.values()):
            self.model.config.layer_types = [self.layer_types[s.model][s.layer] for s in steps]
        self.steps = steps
        return steps


# -- the synthetic fitness -----------------------------------------------------------------------------
class DataFlowSyntheticFitness:
    """Negative relative squared distance between the path model's logits and those of a target genome's
    path on fixed seeded token ids (0 at the target): proves genome -> path -> fitness end to end."""

    def __init__(self, merger: DataFlowMerger, target: Sequence[float], seed: int = 0, batch: int = 2,
                 length: int = 16):
        merger.layout.check_genome(target, "fitness.target")
        self.merger = merger
        generator = torch.Generator().manual_seed(int(seed))
        vocabulary = merger.model.config.vocab_size
        self.inputs = torch.randint(0, vocabulary, (batch, length), generator=generator).to(merger.device)
        merger.apply(target)
        self.target = self._logits()
        self.scale = float(self.target.pow(2).mean()) or 1.0

    @torch.no_grad()
    def _logits(self) -> torch.Tensor:
        """The current path's logits on the fixed inputs."""
        return self.merger.model(input_ids=self.inputs, use_cache=False).logits.float()

    def __call__(self, genome: Sequence[float]):
        from cmaam.search.fitness import Evaluation

        start = time.perf_counter()
        self.merger.apply(genome)
        merged = time.perf_counter()
        distance = float((self._logits() - self.target).pow(2).mean()) / self.scale
        return Evaluation(-distance, {"distance": distance, "path_length": float(len(self.merger.steps))},
                          merged - start, time.perf_counter() - merged)


def plot_path(layout: DataFlowLayout, genome: Sequence[float]):
    """The best path: which slot (model.layer, repeat) runs at which step, coloured by its input scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = layout.decode(genome)
    rows = [f"{model}.{layer}" for model, layer in layout.pool]
    figure, axis = plt.subplots(figsize=(max(5, 0.45 * len(steps) + 3), max(3, 0.3 * len(rows) + 1.5)))
    scales = [step.scale for step in steps]
    points = axis.scatter(range(len(steps)), [rows.index(f"{s.model}.{s.layer}") for s in steps], c=scales,
                          cmap="viridis", s=120, marker="s")
    axis.plot(range(len(steps)), [rows.index(f"{s.model}.{s.layer}") for s in steps], color="grey", lw=0.8, zorder=0)
    axis.set_yticks(range(len(rows)), rows, fontsize=7)
    axis.set_xticks(range(len(steps)))
    axis.set_xlabel("step of the inference path")
    axis.set_ylabel("source layer")
    axis.set_title(f"best data-flow path: {len(steps)} steps from {len(layout.slots)} slots "
                   f"({layout.spec.scaling} scaling)")
    figure.colorbar(points, ax=axis, label="input scale")
    figure.tight_layout()
    return figure
