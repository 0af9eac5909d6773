"""The one streaming analysis pass: score every (source, target) tensor pair, then aggregate per group."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from cmaam.io import CheckpointReader
from cmaam.merging.executor import check_finite, resolve_device
from cmaam.core.errors import CMAAMError
from cmaam.alignment.scores.cmbc import cmbc, embedding_subspace
from cmaam.alignment.scores.gfs import gfs
from cmaam.alignment.scores.pda import pda
from cmaam.alignment.scores.sensitivity import relative_change, variance_term, weighted_mean_and_cv

SCORE_NAMES = ("pda", "gfs", "cmbc")
BRIDGE = "cross_modal_bridge"


@dataclass
class TensorScore:
    """Scores of one tensor pair and where it sits in the model (cmbc is None off the bridge outputs)."""

    name: str
    component: str
    stack: str | None
    layer: int | None
    numel: int
    pda: float
    gfs: float
    cmbc: float | None
    sensitivity: float
    changed: bool = True  # False: S and T are bit-identical, so merging this tensor is a no-op at any alpha

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "name"}


@dataclass
class GroupScore:
    """Element-weighted means of the scores over the *changed* tensors of one group, and its variance v_g.

    Tensors the fine-tune left bit-identical are counted (``tensors``, ``numel``) but do not enter the
    scores, v_g or ``changed_numel`` (the weight of the group in mean alphas): merging them is a no-op.
    """

    numel: int
    tensors: int
    pda: float | None
    gfs: float | None
    cmbc: float | None
    sensitivity: float
    sensitivity_variance: float
    changed_numel: int = 0
    unchanged_tensors: int = 0

    @property
    def changed(self) -> bool:
        """True when at least one tensor of the group differs between S and T."""
        return self.changed_numel > 0

    def score(self, name: str) -> float | None:
        return getattr(self, name)


@dataclass
class Analysis:
    """Per-tensor scores of a pair, plus the tensors that could not be scored (and why)."""

    model_type: str | None
    tensors: dict[str, TensorScore]
    only_in_target: list[str] = field(default_factory=list)
    only_in_source: list[str] = field(default_factory=list)
    not_floating: list[str] = field(default_factory=list)
    embedding: str | None = None
    capture_term: bool = False


def check_pair(source: CheckpointReader, target: CheckpointReader) -> list[str]:
    """Raise CMAAMError unless S and T share an architecture; return the names they share (target order)."""
    if source.model_type and target.model_type and source.model_type != target.model_type:
        raise CMAAMError(f"source is a {source.model_type!r} model but target is {target.model_type!r}: "
                         "both must have one architecture")
    common = [name for name in target.keys() if name in source]
    if not common:
        raise CMAAMError(f"{source.path} and {target.path} share no tensor names: not the same architecture")
    mismatched = [name for name in common if source.shape(name) != target.shape(name)]
    if mismatched:
        details = ", ".join(f"{n} {source.shape(n)} vs {target.shape(n)}" for n in mismatched[:3])
        more = f" and {len(mismatched) - 3} more" if len(mismatched) > 3 else ""
        raise CMAAMError(f"source and target shapes differ ({len(mismatched)} tensors: {details}{more})")
    return common


def resolve_layout(target: CheckpointReader, model_type: str | None = None, rules_file: str | None = None):
    """The layout (component rules) for the target: --rules-file, else --model-type, else its config.json."""
    from cmaam.alignment.layouts import get_layout

    if rules_file is not None or model_type is not None:
        return get_layout(model_type=model_type, rules_file=rules_file)
    return get_layout(config=target.config)


def _load(reader: CheckpointReader, name: str, device: str, allow_nonfinite: bool) -> torch.Tensor:
    """One tensor as float32; NaN/Inf zeroed when allowed (otherwise caught through the scores)."""
    tensor = reader.get(name, device=device, dtype=torch.float32)
    return torch.nan_to_num(tensor, nan=0.0, posinf=0.0, neginf=0.0) if allow_nonfinite else tensor


def score_tensor_pair(name: str, info, source: torch.Tensor, target: torch.Tensor,
                      embedding_basis: torch.Tensor | None = None, bridge_output: bool = False) -> TensorScore:
    """All scores of one tensor pair (CMBC only for a bridge output matrix)."""
    bridge_score = cmbc(source, target, embedding_basis) if bridge_output and target.dim() >= 2 else None
    return TensorScore(name=name, component=info.component, stack=info.stack, layer=info.layer,
                       numel=target.numel(), pda=pda(source, target), gfs=gfs(source, target), cmbc=bridge_score,
                       sensitivity=relative_change(source, target), changed=not torch.equal(source, target))


def analyze_pair(source: CheckpointReader, target: CheckpointReader, layout=None, model_type: str | None = None,
                 rules_file: str | None = None, device: str = "cpu", allow_nonfinite: bool = False,
                 progress: bool = True) -> Analysis:
    """Score every shared floating tensor in one pass (one pair in memory at a time).

    Tensors only in the target, only in the source, or not floating point are listed, not scored.
    """
    common = check_pair(source, target)
    layout = layout or resolve_layout(target, model_type, rules_file)
    names = list(target.keys())
    infos = layout.classify_all(names)
    if layout.has_bridge and not any(info.component == BRIDGE for info in infos.values()):
        raise CMAAMError(f"{target.path}: no cross-modal bridge tensors found for a vision-language "
                         f"{target.model_type or 'model'} (wrong --model-type or an incomplete checkpoint?)")
    device = resolve_device(device)
    analysis = Analysis(model_type=layout.model_type, tensors={},
                        only_in_target=[n for n in names if n not in source],
                        only_in_source=[n for n in source.keys() if n not in target])
    bridge_outputs = [n for n in common if layout.is_bridge_output(n)]
    embedding_basis = None
    if bridge_outputs:
        analysis.embedding = layout.input_embedding(names)
        if analysis.embedding is not None:
            embedding = _load(target, analysis.embedding, device, allow_nonfinite)
            check_finite(embedding, f"{target.path}: {analysis.embedding}")
            embedding_basis = embedding_subspace(embedding)
    analysis.not_floating = [name for name in common if not target.dtype(name).is_floating_point]
    scored = [name for name in common if target.dtype(name).is_floating_point]

    def load_pair(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return _load(source, name, device, allow_nonfinite), _load(target, name, device, allow_nonfinite)

    # the next pair loads in a background thread while this one is scored (reads release the GIL)
    with ThreadPoolExecutor(1, thread_name_prefix="cmaam-analysis-load") as loader:
        pending = loader.submit(load_pair, scored[0]) if scored else None
        for index, name in enumerate(tqdm(scored, desc="analysing", unit="tensor", disable=not progress, leave=False)):
            tensor_s, tensor_t = pending.result()
            if index + 1 < len(scored):
                pending = loader.submit(load_pair, scored[index + 1])
            score = score_tensor_pair(name, infos[name], tensor_s, tensor_t,
                                      embedding_basis if name in bridge_outputs else None, name in bridge_outputs)
            if not math.isfinite(score.sensitivity):  # any NaN/Inf in S or T makes r non-finite
                check_finite(tensor_s, f"{source.path}: {name}")
                check_finite(tensor_t, f"{target.path}: {name}")
            analysis.tensors[name] = score
            analysis.capture_term |= (score.cmbc is not None and embedding_basis is not None
                                      and embedding_basis.shape[0] == tensor_t.shape[0])
            del tensor_s, tensor_t
    return analysis


def _weighted_mean(pairs: list[tuple[float, int]]) -> float | None:
    total = sum(weight for _, weight in pairs)
    if not pairs or total == 0:
        return None
    return sum(value * weight for value, weight in pairs) / total


def aggregate(scores: Iterable[TensorScore], key: Callable[[TensorScore], str]) -> dict[str, GroupScore]:
    """Group tensors by ``key``; average each score over the group's changed tensors, weighted by element
    count (first-seen order). A group with no changed tensor has no scores (None) and v_g = 0."""
    members: dict[str, list[TensorScore]] = {}
    for score in scores:
        members.setdefault(key(score), []).append(score)
    groups = {}
    for group, items in members.items():
        changed = [item for item in items if item.changed]
        weights = [item.numel for item in changed]
        mean_r, cv = weighted_mean_and_cv([item.sensitivity for item in changed], weights)
        groups[group] = GroupScore(
            numel=sum(item.numel for item in items), tensors=len(items),
            pda=_weighted_mean([(item.pda, item.numel) for item in changed]),
            gfs=_weighted_mean([(item.gfs, item.numel) for item in changed]),
            cmbc=_weighted_mean([(item.cmbc, item.numel) for item in changed if item.cmbc is not None]),
            sensitivity=mean_r, sensitivity_variance=variance_term(cv),
            changed_numel=sum(weights), unchanged_tensors=len(items) - len(changed),
        )
    return groups
