"""VLM search: CMA-ES over the per-group CMAAM alphas of a (target, source) VLM pair, scored by VQA with images.

The groups and starting alphas are CMAAM's (``cmaam.merge``'s analysis of the pair: strategy, base alpha,
score weights); a gene is either the group's alpha itself (``genes: alpha``, start = CMAAM's alpha) or a
factor on it (``genes: scale``, start 1, alpha = clip(scale x CMAAM alpha, 0, 1)). Each candidate is
merged in memory into one preallocated model ((1 - alpha) T + alpha S per tensor, or slerp) and answers
the target-language dev split and an English retention set:

    fitness = w_target x metric(target dev) + w_retention x metric(retention)

Per item the score is w_g x metric_i x N / N_g (N items, N_g in the item's set), so the fitness is the
mean item score and the subset fitness (cmaam.search.subset) applies unchanged.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from cmaam.core.config import InvalidValue, between, one_of, setting
from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.alignment.alphas.strategies import STRATEGIES
from cmaam.merging.pairs import INTERPOLATIONS
from cmaam.search.genome import LayoutBase

GENE_KINDS = ("scale", "alpha")
VQA_METRICS = ("exact_match", "vqa_accuracy", "relaxed_accuracy", "anls")


@dataclass
class AlphaSearchSpec:
    """The ``alphas`` section: CMAAM's grouping and start, what a gene means, and the step size."""

    strategy: str = setting("layerwise", check=one_of(STRATEGIES))  # CMAAM grouping: one gene per group
    base_alpha: float = setting(0.5, check=between(0, 1))
    alpha_min: float = setting(0.0, check=between(0, 1))
    alpha_max: float = setting(1.0, check=between(0, 1))
    score_weights: dict[str, float] | None = None  # default pda 0.4, gfs 0.3, cmbc 0.3
    preserve_mean: bool = False
    use_sensitivity: bool = True
    genes: str = setting("scale", check=one_of(GENE_KINDS))  # scale: factor on CMAAM's alpha | alpha: the alpha
    scale_bounds: tuple[float, float] = (0.0, 2.0)
    interp: str = setting("linear", check=one_of(INTERPOLATIONS))  # linear | slerp
    sigma: float = 0.1

    def validate(self) -> None:
        """Bounds and step size; CMAAM's own checks of the alpha settings."""
        low, high = self.scale_bounds
        if not 0 <= low < high:
            raise InvalidValue("scale_bounds", f"must be [low, high] with 0 <= low < high, got [{low}, {high}]")
        if not float(self.sigma) > 0:
            raise InvalidValue("sigma", f"must be positive, got {self.sigma}")
        self.alpha_config().validate()

    def alpha_config(self):
        """CMAAM's AlphaConfig for the starting alphas."""
        from cmaam.alignment.alphas import AlphaConfig, parse_score_weights

        return AlphaConfig(strategy=self.strategy, base_alpha=float(self.base_alpha), alpha_min=float(self.alpha_min),
                           alpha_max=float(self.alpha_max), score_weights=parse_score_weights(self.score_weights),
                           preserve_mean=bool(self.preserve_mean), use_sensitivity=bool(self.use_sensitivity))


class AlphaLayout(LayoutBase):
    """The map between a genome (one gene per CMAAM group) and per-tensor alphas.

    ``start`` is CMAAM's alpha of every group, ``tensor_group`` the group of every merged tensor.
    """

    def __init__(self, spec: AlphaSearchSpec, start: Mapping[str, float], tensor_group: Mapping[str, str],
                 target: str, source: str):
        if not start:
            raise CMAAMError("alphas: the CMAAM analysis found no tensors to merge")
        self.spec = spec
        self.groups = list(start)
        self.start = {group: float(alpha) for group, alpha in start.items()}
        self.tensor_group = dict(tensor_group)
        self.target, self.source = target, source
        self.labels = [f"{spec.genes}[{group}]" for group in self.groups]

    def bounds(self) -> tuple[list[float], list[float]]:
        low, high = self.spec.scale_bounds if self.spec.genes == "scale" else (0.0, 1.0)
        return [low] * len(self), [high] * len(self)

    def initial(self) -> list[float]:
        return [1.0] * len(self) if self.spec.genes == "scale" else [self.start[g] for g in self.groups]

    def check_genome(self, genome: Sequence[float], where: str = "genome") -> None:
        if len(genome) != len(self):
            raise CMAAMError(f"{where} has {len(genome)} values but this alpha genome needs {len(self)} "
                             f"(one per {self.spec.strategy} group)")

    def describe(self) -> dict:
        return {"space": "alphas", "alphas": asdict(self.spec), "start": self.start}

    def group_alphas(self, genome: Sequence[float]) -> dict[str, float]:
        """The alpha of every group the genome describes (in [0, 1])."""
        self.check_genome(genome)
        values = self.clip(genome)
        if self.spec.genes == "alpha":
            return dict(zip(self.groups, values))
        return {group: min(max(value * self.start[group], 0.0), 1.0) for group, value in zip(self.groups, values)}

    def tensor_alphas(self, genome: Sequence[float]) -> dict[str, float]:
        alphas = self.group_alphas(genome)
        return {name: alphas[group] for name, group in self.tensor_group.items()}


def plan_alpha_layout(readers: Mapping[str, Any], target: str, spec: AlphaSearchSpec,
                      options: ExecutionOptions | None = None) -> AlphaLayout:
    """Run CMAAM's analysis of the pair (source = the model that is not ``target``) and lay out the genome."""
    from cmaam.alignment.alphas import compute_alphas
    from cmaam.alignment.scores.analyzer import analyze_pair

    if len(readers) != 2 or target not in readers:
        raise CMAAMError(f"alphas: the search merges exactly two models, the target (base_model) and a source; "
                         f"got {', '.join(readers)}")
    source = next(name for name in readers if name != target)
    analysis = analyze_pair(readers[source], readers[target], options)
    if analysis.only_in_target or analysis.only_in_source:
        first = (analysis.only_in_target or analysis.only_in_source)[0]
        raise CMAAMError(f"alphas: {source} and {target} must hold the same tensors (first difference: {first!r})")
    plan = compute_alphas(analysis, spec.alpha_config())
    start = {group: value.alpha for group, value in plan.groups.items()}
    return AlphaLayout(spec, start, plan.tensor_group, target, source)


def alphas_to_mergekit(layout: AlphaLayout, genome: Sequence[float], model_paths: Mapping[str, str],
                       dtype: str | None = None) -> dict[str, Any]:
    """The mergekit config that writes the genome's merge: linear weights (1 - alpha, alpha) or slerp t, per
    tensor as ``{filter: name, value}`` entries (longest names first, so no filter matches a longer name)."""
    alphas = layout.tensor_alphas(genome)
    names = sorted(alphas, key=len, reverse=True)
    target, source = model_paths[layout.target], model_paths[layout.source]
    if layout.spec.interp == "slerp":
        config: dict[str, Any] = {
            "merge_method": "slerp", "base_model": target,
            "models": [{"model": target}, {"model": source}],
            "parameters": {"t": [{"filter": name, "value": alphas[name]} for name in names] + [{"value": 0.0}]}}
    else:
        config = {"merge_method": "linear", "parameters": {"normalize": False}, "models": [
            {"model": target, "parameters": {"weight": [{"filter": n, "value": 1.0 - alphas[n]} for n in names]
                                             + [{"value": 1.0}]}},
            {"model": source, "parameters": {"weight": [{"filter": n, "value": alphas[n]} for n in names]
                                             + [{"value": 0.0}]}}]}
    if dtype:
        config["dtype"] = dtype
    return config


# -- in-memory merge ------------------------------------------------------------------------------------
class AlphaMerger:
    """Target and source tensors on the device; ``apply(genome)`` writes the merge into one preallocated VLM."""

    def __init__(self, models: Mapping[str, str | Path], layout: AlphaLayout, options: ExecutionOptions | None = None):
        """``options``: device, dtype of the merged model (default: as stored), pickles and remote code."""
        from cmaam.io import CheckpointReader, parse_dtype
        from cmaam.merging.executor import resolve_device
        from cmaam.search.inmemory import build_empty_model, checkpoint_targets

        options = options or ExecutionOptions()
        dtype, trust_remote_code, allow_pickle = parse_dtype(options.dtype), options.trust_remote_code, \
            options.allow_pickle
        self.device = resolve_device(options.device)
        self.layout = layout
        self.base_path = Path(models[layout.target])
        with CheckpointReader(models[layout.target], allow_pickle=allow_pickle) as target, \
                CheckpointReader(models[layout.source], allow_pickle=allow_pickle) as source:
            first = next(iter(layout.tensor_group))
            self.model = build_empty_model(self.base_path, self.device, dtype or target.dtype(first), trust_remote_code,
                                           vision=True)
            self.targets = checkpoint_targets(self.model, target)
            self.inputs: dict[str, list[torch.Tensor]] = {}
            with torch.no_grad():
                for name, tensor in self.targets.items():
                    if name in layout.tensor_group:
                        self.inputs[name] = [target.get(name, device=self.device).float(),
                                             source.get(name, device=self.device).float()]
                    else:
                        tensor.copy_(target.get(name, device=self.device))

    @torch.no_grad()
    def apply(self, genome: Sequence[float]) -> dict[str, float]:
        """Overwrite the merged tensors with the genome's alphas; returns the group alphas.

        Computed with the thread count of a written merge (``kernel_threads``): a slerp's norms are sums whose
        rounding depends on it, and the recipe must rewrite this merge exactly.
        """
        from cmaam.merging.executor import kernel_threads
        from cmaam.merging.pairs import interpolate

        with kernel_threads():
            for name, alpha in self.layout.tensor_alphas(genome).items():
                self.targets[name].copy_(interpolate(self.inputs[name], alpha, self.layout.spec.interp))
        return self.layout.group_alphas(genome)


# -- VQA fitness --------------------------------------------------------------------------------------
def load_vqa_items(source: str | Path, split: str, limit: int | None, where: str) -> list:
    """VQA items of a folder's ``<split>.jsonl`` (or of a JSONL file), images checked."""
    from eval.vqa import load_vqa_jsonl

    path = Path(source)
    if path.is_dir():
        path = path / f"{split}.jsonl"
    if not path.is_file():
        raise CMAAMError(f"{where}: {path} not found (a VQA folder with {split}.jsonl, or a JSONL file)")
    items = load_vqa_jsonl(path, limit=limit)
    if not items:
        raise CMAAMError(f"{where}: {path} holds no items")
    return items


class VQAFitness:
    """Weighted VQA metric of the in-memory VLM merge on the target dev items and the retention items
    (``config``: the evolve config's FitnessConfig: metric, weights, batch size, new tokens)."""

    def __init__(self, merger: AlphaMerger, config, items: Sequence[Any], retention_items: Sequence[Any] = (),
                 trust_remote_code: bool = False):
        from cmaam.io.processors import load_processor
        from eval.generation import HFGenerator

        self.merger = merger
        self.config = config
        processor = load_processor(merger.base_path, trust_remote_code=trust_remote_code)
        if processor is None:
            raise CMAAMError(f"{merger.base_path}: no processor; the VQA fitness needs a vision-language model")
        self.generator = HFGenerator.from_model(merger.model, processor, batch_size=config.batch_size,
                                                max_new_tokens=config.max_new_tokens, progress=False)
        self.items = list(items) + list(retention_items)
        total, target = len(self.items), len(items)
        weights = config.weights or {}
        self.groups = ["target"] * target + ["retention"] * len(retention_items)
        counts = {"target": target, "retention": len(retention_items)}
        self.factor = [float(weights.get(g, 1.0)) * total / counts[g] for g in self.groups]

    def __call__(self, genome: Sequence[float], items: Sequence[int] | None = None):
        from cmaam.search.fitness import Evaluation
        from eval.vqa import evaluate_vqa

        positions = list(range(len(self.items))) if items is None else [int(i) for i in items]
        start = time.perf_counter()
        alphas = self.merger.apply(genome)
        merged = time.perf_counter()
        result = evaluate_vqa(self.generator, [self.items[i] for i in positions],
                              max_new_tokens=self.config.max_new_tokens)
        metric = self.config.metric
        raw = [float(sample[metric]) for sample in result.samples]
        scores = [value * self.factor[i] for value, i in zip(raw, positions)]
        metrics: dict[str, float] = {"count": float(len(positions))}
        for group in ("target", "retention"):
            values = [value for value, i in zip(raw, positions) if self.groups[i] == group]
            if values:
                metrics[f"{group}/{metric}"] = sum(values) / len(values)
        metrics["mean_alpha"] = sum(alphas.values()) / len(alphas)
        return Evaluation(sum(scores) / len(scores), metrics, merged - start, time.perf_counter() - merged, scores)


def plot_alphas(layout: AlphaLayout, genome: Sequence[float]):
    """Best alpha per group next to CMAAM's starting alpha."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    best = layout.group_alphas(genome)
    positions = np.arange(len(layout.groups))
    figure, axis = plt.subplots(figsize=(max(5, 0.4 * len(positions) + 2), 3.8))
    axis.bar(positions - 0.2, [layout.start[g] for g in layout.groups], 0.4, label="CMAAM (start)", color="tab:grey")
    axis.bar(positions + 0.2, [best[g] for g in layout.groups], 0.4, label="evolved", color="tab:orange")
    axis.set_xticks(positions, layout.groups, rotation=90, fontsize=7)
    axis.set_ylabel("alpha (share of the source)")
    axis.set_ylim(0, 1)
    axis.set_title(f"per-group alphas ({layout.spec.strategy}, genes: {layout.spec.genes})")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
