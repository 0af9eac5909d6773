"""Extract a peft LoRA adapter from a fine-tune: truncated SVD of (model - base) per linear module.

Semantics of mergekit-extract-lora (mergekit/scripts/extract_lora.py): every module with a weight is planned
from the model's module tree (built on the meta device, no weights); linear modules (and embeddings with
``embed_lora``) become LoRA pairs A = sqrt(S_r) Vh_r, B = U_r sqrt(S_r) (``distribute_scale``; else A = S_r Vh_r,
B = U_r) with lora_alpha = r, so peft's scale is 1; input/output embeddings and modules of other types (norms,
convolutions) are saved at full rank in ``modules_to_save``; ``include``/``exclude`` regexes choose the decomposed
modules. Differences from mergekit: modules whose weights are equal in both models are left out; convolutions
are saved at full rank (mergekit runs a batched SVD over their kernel, which is not a peft conv LoRA); a changed
bias of a decomposed module is saved as its ``base_layer.bias`` with ``bias: lora_only``; module names are the
running model's full names (transformers 5), so target_modules and modules_to_save match exactly those modules.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from cmaam.core.errors import CMAAMError, load_errors
from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader, CheckpointWriter, TensorSpec, parse_dtype
from cmaam.io.adapters import open_model
from cmaam.io.atomic import claim_output
from cmaam.io.names import NameIndex
from cmaam.merging.executor import check_finite, resolve_device

logger = logging.getLogger(__name__)
REPORT_FILE = "extraction_report.json"
PEFT_PREFIX = "base_model.model."


@dataclass
class ExtractionOptions:
    """What is extracted: the rank, which modules, how the singular values are split between A and B."""

    rank: int = 32
    include: Sequence[str] = ()  # regexes (re.search on the module name); empty: every module
    exclude: Sequence[str] = ()
    embed_lora: bool = False  # decompose embeddings too (default: saved at full rank)
    save_modules: Sequence[str] = ()  # module names (or their last part) saved at full rank
    distribute_scale: bool = True
    skip_undecomposable: bool = False  # leave out changed modules that are neither linear nor embeddings

    def validate(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise CMAAMError(f"--rank must be a positive integer, got {self.rank!r}")
        for pattern in [*self.include, *self.exclude]:
            try:
                re.compile(pattern)
            except re.error as error:
                raise CMAAMError(f"bad module regex {pattern!r} ({error})") from None


@dataclass
class ModulePlan:
    """One module of the model: its peft name, its checkpoint tensors and what becomes of it."""

    module: str
    kind: str  # "lora", "embedding_lora" or "full"
    weight: str  # checkpoint name of the weight
    params: dict[str, str] = field(default_factory=dict)  # parameter (weight, bias) -> checkpoint name
    rank: int = 0

    @property
    def transposed(self) -> bool:
        return self.kind == "embedding_lora"


@dataclass
class ModuleResult:
    """What was written for one module: its kind, shape, rank and relative reconstruction error ||D - BA|| / ||D||."""

    module: str
    kind: str
    shape: list[int]
    rank: int | None
    relative_error: float | None
    bias_saved: bool = False


@dataclass
class ExtractionReport:
    """Per-module results and the modules left out (unchanged, excluded, or not representable)."""

    base: str
    model: str
    rank: int
    modules: list[ModuleResult]
    unchanged: list[str]
    excluded: list[str]
    not_representable: list[str]

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        """The per-module table printed by the CLI (the JSON report has the same rows)."""
        rows = [("module", "kind", "shape", "rank", "rel. error")]
        for result in self.modules:
            rows.append((result.module, result.kind, "x".join(map(str, result.shape)),
                         "" if result.rank is None else str(result.rank),
                         "" if result.relative_error is None else f"{result.relative_error:.6f}"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        errors = [r.relative_error for r in self.modules if r.relative_error is not None]
        lines.append(f"{len(errors)} decomposed (mean relative error {sum(errors) / len(errors):.6f}, max "
                     f"{max(errors):.6f}), " if errors else "0 decomposed, ")
        lines[-1] += (f"{sum(r.kind == 'full' for r in self.modules)} at full rank, {len(self.unchanged)} unchanged, "
                      f"{len(self.excluded)} excluded, {len(self.not_representable)} not representable")
        return "\n".join(lines)


def skeleton_model(folder: Path, config: dict) -> Any:
    """The model of ``folder``'s config built on the meta device (module tree and names, no weights)."""
    import transformers

    architectures = config.get("architectures") or []
    model_class = next((getattr(transformers, name) for name in architectures if hasattr(transformers, name)), None)
    if model_class is None:
        raise CMAAMError(f"{folder}: unknown architecture {architectures or config.get('model_type')!r} "
                         "(transformers has no such class; remote-code models are not supported)")
    with load_errors(folder, "model config"):
        model_config = transformers.AutoConfig.from_pretrained(folder)
        with torch.device("meta"):
            return model_class._from_config(model_config)


def matches(name: str, patterns: Sequence[str]) -> bool:
    return any(re.search(pattern, name) for pattern in patterns)


def plan_modules(model: Any, index: NameIndex, options: ExtractionOptions) -> tuple[list[ModulePlan], list[str]]:
    """Every module with a weight in the checkpoint, planned as mergekit plans it; and the excluded modules."""
    from torch import nn

    embeddings = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    plans, excluded = [], []
    for name, module in model.named_modules():
        if not isinstance(getattr(module, "weight", None), torch.Tensor) or "weight" not in module._parameters:
            continue
        weight = index.find(f"{name}.weight")
        if weight is None:  # a tied lm_head: the checkpoint stores only the embedding
            continue
        params = {param: found for param in module._parameters
                  if module._parameters[param] is not None and (found := index.find(f"{name}.{param}"))}
        is_embedding = id(module) in embeddings or isinstance(module, nn.Embedding)
        saved = name in options.save_modules or name.rsplit(".", 1)[-1] in options.save_modules
        if saved or (is_embedding and not options.embed_lora and not matches(name, options.exclude)):
            plans.append(ModulePlan(name, "full", weight, params))
        elif (options.include and not matches(name, options.include)) or matches(name, options.exclude):
            excluded.append(name)
        elif isinstance(module, nn.Linear) or (isinstance(module, nn.Embedding) and options.embed_lora):
            kind = "embedding_lora" if isinstance(module, nn.Embedding) else "lora"
            plans.append(ModulePlan(name, kind, weight, params, min(options.rank, *module.weight.shape)))
        elif not options.skip_undecomposable:
            plans.append(ModulePlan(name, "full", weight, params))
        else:
            excluded.append(name)
    return plans, excluded


def lora_factors(delta: torch.Tensor, rank: int, distribute_scale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with B @ A the best rank-``rank`` approximation of ``delta`` (Eckart-Young), as mergekit factors it."""
    u, s, vh = torch.linalg.svd(delta.to(torch.float32), full_matrices=False)
    rank = min(rank, s.shape[0])
    if distribute_scale:
        root = torch.sqrt(s[:rank])
        return root[:, None] * vh[:rank], u[:, :rank] * root[None, :]
    return s[:rank, None] * vh[:rank], u[:, :rank]


def relative_error(delta: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    """||delta - B @ A||_F / ||delta||_F (0 for a zero delta)."""
    norm = torch.linalg.matrix_norm(delta.double()).item()
    residual = torch.linalg.matrix_norm(delta.double() - b.double() @ a.double()).item()
    return residual / norm if norm > 0 else 0.0


def _changed(base, model, plan: ModulePlan) -> bool:
    return any(not torch.equal(base.get(name), model.get(name)) for name in plan.params.values())


def _specs(plans: list[ModulePlan], model, dtype: torch.dtype | None) -> tuple[list[TensorSpec], dict[str, str]]:
    """The adapter's tensors (peft names) and, for biases saved beside a LoRA pair, their checkpoint names."""
    specs, biases = [], {}
    for plan in plans:
        stored = model.dtype(plan.weight)
        out = dtype or stored
        if plan.kind == "full":
            specs += [TensorSpec(f"{PEFT_PREFIX}{plan.module}.{param}", model.shape(name), dtype or model.dtype(name))
                      for param, name in plan.params.items()]
            continue
        rows, columns = model.shape(plan.weight)
        if plan.transposed:  # embedding (vocab, hidden): lora_embedding_A (r, vocab), lora_embedding_B (hidden, r)
            specs += [TensorSpec(f"{PEFT_PREFIX}{plan.module}.lora_embedding_A", (plan.rank, rows), out),
                      TensorSpec(f"{PEFT_PREFIX}{plan.module}.lora_embedding_B", (columns, plan.rank), out)]
        else:
            specs += [TensorSpec(f"{PEFT_PREFIX}{plan.module}.lora_A.weight", (plan.rank, columns), out),
                      TensorSpec(f"{PEFT_PREFIX}{plan.module}.lora_B.weight", (rows, plan.rank), out)]
        if "bias" in plan.params:
            key = f"{PEFT_PREFIX}{plan.module}.base_layer.bias"
            biases[key] = plan.params["bias"]
            specs.append(TensorSpec(key, model.shape(plan.params["bias"]), dtype or model.dtype(plan.params["bias"])))
    return specs, biases


def exact_pattern(name: str) -> str:
    """A peft rank/alpha pattern matching exactly the module ``name`` (peft reads pattern keys as regexes)."""
    return re.escape(name)


def adapter_config(base: Path, plans: list[ModulePlan], config: dict, bias: bool) -> dict:
    """adapter_config.json as mergekit writes it: r = lora_alpha = the largest rank, other ranks as patterns."""
    lora = [plan for plan in plans if plan.kind != "full"]
    rank = max((plan.rank for plan in lora), default=1)
    different = {exact_pattern(plan.module): plan.rank for plan in lora if plan.rank != rank}
    vision = "vision_config" in config
    return {
        "base_model_name_or_path": str(base.resolve()), "peft_type": "LORA",
        "task_type": None if vision else "CAUSAL_LM", "r": rank, "lora_alpha": rank, "use_rslora": False,
        "rank_pattern": different, "alpha_pattern": dict(different), "lora_dropout": 0.0,
        "target_modules": [plan.module for plan in lora],
        "modules_to_save": [plan.module for plan in plans if plan.kind == "full"] or None,
        "bias": "lora_only" if bias else "none", "fan_in_fan_out": False, "inference_mode": True,
    }


def check_modules_to_save(model: Any, plans: list[ModulePlan]) -> None:
    """peft matches modules_to_save by the end of module names: each entry must match only its own module."""
    names = [name for name, _ in model.named_modules()]
    for plan in plans:
        if plan.kind == "full":
            others = [name for name in names if name.endswith(plan.module) and name != plan.module]
            if others:
                raise CMAAMError(f"module {plan.module!r} cannot be saved unambiguously: peft would also match "
                                 f"{others[0]!r} (exclude one of them with --exclude)")


def extract_lora(base: str | Path, model: str | Path, output: str | Path, extraction: ExtractionOptions | None = None,
                 options: ExecutionOptions | None = None) -> ExtractionReport:
    """Write a peft LoRA adapter of ``model`` relative to ``base`` to ``output`` (atomic), with a per-module report.

    ``options``: the device of the SVDs, the dtype of the adapter tensors (default: the model's), overwrite,
    pickles, the base of an adapter given as ``model``, progress.
    """
    options = options or ExecutionOptions()
    extraction = extraction or ExtractionOptions()
    extraction.validate()
    options.validate()
    dtype = parse_dtype(options.dtype)
    device = resolve_device(options.device)
    with claim_output(output, inputs=[base, model], overwrite=options.overwrite):
        base_reader = CheckpointReader(base, allow_pickle=options.allow_pickle)
        model_reader = open_model(model, options.allow_pickle, options.adapter_base)
        if base_reader.model_type != model_reader.model_type:
            raise CMAAMError(f"base is a {base_reader.model_type!r} model but the fine-tune is "
                             f"{model_reader.model_type!r}: extraction needs one architecture")
        skeleton = skeleton_model(model_reader.reference_folder, model_reader.config)
        plans, excluded = plan_modules(skeleton, NameIndex(model_reader.keys()), extraction)
        for plan in plans:
            for name in plan.params.values():
                if name not in base_reader:
                    raise CMAAMError(f"{base_reader.path}: missing tensor {name!r} (not the fine-tune's base?)")
                if base_reader.shape(name) != model_reader.shape(name):
                    raise CMAAMError(f"shape mismatch for {name!r}: base {base_reader.shape(name)} vs model "
                                     f"{model_reader.shape(name)} (vocabulary resized? resize the base first)")
        covered = {name for plan in plans for name in plan.params.values()}
        uncovered = [name for name in model_reader.keys() if name not in covered]
        changed = [plan for plan in tqdm(plans, desc="comparing", unit="module", disable=not options.progress,
                                         leave=False) if _changed(base_reader, model_reader, plan)]
        unchanged = [plan.module for plan in plans if plan not in changed]
        not_representable = [name for name in uncovered if name in base_reader and
                             base_reader.shape(name) == model_reader.shape(name) and
                             not torch.equal(base_reader.get(name), model_reader.get(name))]
        if not_representable:
            logger.warning("%d changed tensor(s) belong to no module peft can save and are left out: %s",
                           len(not_representable), ", ".join(not_representable[:5]))
        if not changed:
            raise CMAAMError(f"{model} and {base} have equal weights in every module: nothing to extract")
        check_modules_to_save(skeleton, changed)
        biases_changed = {f"{PEFT_PREFIX}{plan.module}.base_layer.bias" for plan in changed
                          if plan.kind != "full" and "bias" in plan.params and
                          not torch.equal(base_reader.get(plan.params["bias"]), model_reader.get(plan.params["bias"]))}
        specs, biases = _specs(changed, model_reader, dtype)
        specs = [spec for spec in specs if spec.name not in biases or spec.name in biases_changed]
        results = []
        inputs = [base, model, *base_reader.files, *model_reader.files]
        with CheckpointWriter(output, specs, max_shard_size=2**62, overwrite=options.overwrite, inputs=inputs,
                              basename="adapter_model") as writer:
            for plan in tqdm(changed, desc="extracting", unit="module", disable=not options.progress, leave=False):
                results.append(_write_module(writer, plan, base_reader, model_reader, biases_changed,
                                             extraction.distribute_scale, dtype or model_reader.dtype(plan.weight),
                                             device))
            report = ExtractionReport(str(base), str(model), extraction.rank, results, unchanged, excluded,
                                      not_representable)
            config = adapter_config(Path(base), changed, model_reader.config, bool(biases_changed))
            (writer.folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
            (writer.folder / REPORT_FILE).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _write_module(writer: CheckpointWriter, plan: ModulePlan, base, model, biases_changed: set[str],
                  distribute_scale: bool, stored: torch.dtype, device: str) -> ModuleResult:
    """Decompose (or copy) one module into the open adapter writer; its report row."""
    shape = list(model.shape(plan.weight))
    if plan.kind == "full":
        for param, name in plan.params.items():
            writer.add(f"{PEFT_PREFIX}{plan.module}.{param}", model.get(name))
        return ModuleResult(plan.module, "full", shape, None, None)
    delta = model.get(plan.weight, device=device, dtype=torch.float32) - \
        base.get(plan.weight, device=device, dtype=torch.float32)
    check_finite(delta, f"{model.path}: {plan.weight} - base")
    if plan.transposed:
        delta = delta.T
    a, b = lora_factors(delta, plan.rank, distribute_scale)
    a, b = a.to(stored), b.to(stored)
    suffixes = ("lora_embedding_A", "lora_embedding_B") if plan.transposed else ("lora_A.weight", "lora_B.weight")
    writer.add(f"{PEFT_PREFIX}{plan.module}.{suffixes[0]}", a)
    writer.add(f"{PEFT_PREFIX}{plan.module}.{suffixes[1]}", b)
    bias_key = f"{PEFT_PREFIX}{plan.module}.base_layer.bias"
    if bias_key in biases_changed:
        writer.add(bias_key, model.get(plan.params["bias"]))
    error = relative_error(delta, a.float(), b.float())
    return ModuleResult(plan.module, plan.kind, shape, plan.rank, error, bias_key in biases_changed)

