"""A data-flow path as a mergekit passthrough recipe and as a runnable model, with input scales folded into
the weights where that is exact and a small custom module where it is not.

When folding is exact:
- the first step's scale s_1 multiplies the embeddings: s_1 * E(x) = (s_1 E)(x), provided the first
  model does not tie its embeddings to the LM head (then the head would be scaled too);
- later scales s_t change the residual stream itself, ``h_t = s_t h + f_t(s_t h)``, which no weight of a
  pre-norm block can express. With RMSNorm eps = 0 every branch reads the stream only through a
  scale-invariant norm, and the path is equivalent to the plain stack whose attention output and MLP down
  projections of step t are divided by c_t = s_2 ... s_t (u_t = h_t / c_t; the final norm removes c_T).
  With eps > 0 (every real checkpoint) RMSNorm(c x) != RMSNorm(x), so that fold is not exact.

Otherwise the weights are the unscaled passthrough frankenmerge and ``config.json`` names a custom
``model_type`` whose code (modeling_cmaam_dataflow.py, copied beside the weights) applies ``input_scales``
with forward pre-hooks; it loads with ``trust_remote_code=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from cmaam.core.options import ExecutionOptions
from cmaam.search.dataflow import Step

# pre-norm RMSNorm blocks whose branches read the residual stream only through the norm
RESIDUAL_FOLD_TYPES = ("llama", "mistral", "qwen2")
BRANCH_OUTPUTS = ("self_attn.o_proj", "mlp.down_proj")
MODELING_FILE = "modeling_cmaam_dataflow.py"


@dataclass
class Fold:
    """How the input scales end up in the written model.

    ``kind`` is "exact" (plain checkpoint of the base family: ``embedding_scale`` on the embeddings,
    ``branch_scales[t]`` on step t's branch outputs) or "custom" (unscaled weights plus ``input_scales``).
    """

    kind: str
    embedding_scale: float
    branch_scales: list[float]
    input_scales: list[float]
    reason: str


def plan_fold(steps: Sequence[Step], configs: Mapping[str, Mapping[str, Any]]) -> Fold:
    """Decide whether the path's input scales fold exactly into weights (see the module docstring)."""
    scales = [float(step.scale) for step in steps]
    custom = Fold("custom", 1.0, [1.0] * len(steps), scales, "")
    first = configs[steps[0].model]
    if scales[0] != 1.0 and first.get("tie_word_embeddings", True):
        custom.reason = f"{steps[0].model} ties its embeddings to the LM head, so the first input scale cannot go " \
                        "into the embeddings alone"
        return custom
    branch = [1.0] * len(steps)
    if any(scale != 1.0 for scale in scales[1:]):
        used = {configs[step.model].get("model_type") for step in steps}
        eps = {configs[step.model].get("rms_norm_eps") for step in steps}
        if not used <= set(RESIDUAL_FOLD_TYPES):
            custom.reason = f"input scales after the first step fold only for {', '.join(RESIDUAL_FOLD_TYPES)}"
            return custom
        if eps != {0} and eps != {0.0}:
            custom.reason = ("input scales after the first step rescale the residual stream; with RMSNorm eps "
                             f"{sorted(eps)} > 0 that is not a change of weights")
            return custom
        cumulative = 1.0
        for index in range(1, len(steps)):
            cumulative *= scales[index]
            branch[index] = 1.0 / cumulative
    return Fold("exact", scales[0], branch, scales, "every input scale folds into the weights")


def dataflow_to_mergekit(steps: Sequence[Step], model_paths: Mapping[str, str], fold: Fold,
                         dtype: str | None = None) -> dict[str, Any]:
    """The passthrough mergekit config (a dict ready for YAML) that writes the path's weights.

    One slice per step, ``layer_range: [layer, layer + 1]``; folded scales are passthrough ``scale``
    entries filtered by tensor name. With ``fold.kind == "custom"`` the recipe holds the unscaled weights.
    """
    exact = fold.kind == "exact"
    slices = []
    for index, step in enumerate(steps):
        source: dict[str, Any] = {"model": model_paths[step.model], "layer_range": [step.layer, step.layer + 1]}
        entries = []
        if exact and index == 0 and fold.embedding_scale != 1.0:
            entries.append({"filter": "embed_tokens", "value": fold.embedding_scale})
        if exact and fold.branch_scales[index] != 1.0:
            entries += [{"filter": name, "value": fold.branch_scales[index]} for name in BRANCH_OUTPUTS]
        if entries:
            source["parameters"] = {"scale": entries + [{"value": 1.0}]}
        slices.append({"sources": [source]})
    config: dict[str, Any] = {"merge_method": "passthrough", "slices": slices}
    if dtype:
        config["dtype"] = dtype
    return config


def custom_model_parts(base_model_type: str, fold: Fold) -> tuple[dict[str, Any], dict[str, str]]:
    """The config.json changes and the modeling file that turn the unscaled passthrough output into the
    input-scaled custom model."""
    from cmaam.search import dataflow_modeling

    update = {"model_type": dataflow_modeling.MODEL_TYPE, "architectures": ["DataFlowForCausalLM"],
              "input_scales": list(fold.input_scales), "cmaam_base_model_type": base_model_type,
              "auto_map": {"AutoConfig": f"{MODELING_FILE[:-3]}.DataFlowConfig",
                           "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.DataFlowForCausalLM"}}
    source = Path(dataflow_modeling.__file__).read_text(encoding="utf-8")
    marker = 'BASE_MODEL_TYPE = "llama"'
    if marker not in source:
        raise RuntimeError(f"{dataflow_modeling.__file__}: the BASE_MODEL_TYPE line changed")
    return update, {MODELING_FILE: source.replace(marker, f"BASE_MODEL_TYPE = {base_model_type!r}")}


def write_dataflow_model(recipe_path: str | Path, fold: Fold, output: str | Path, base_model_type: str,
                         options: ExecutionOptions | None = None) -> Path:
    """Run the passthrough recipe into ``output`` (``options``: seed, device, overwrite, progress ...); for a
    custom fold add the input-scale module."""
    from cmaam.merging.config_merge import merge_from_config

    update, files = custom_model_parts(base_model_type, fold) if fold.kind == "custom" else (None, None)
    return merge_from_config(recipe_path, output, options, config_update=update, extra_files=files)
