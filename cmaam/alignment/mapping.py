"""Parameter mapping between layouts: which source tensor each target tensor is merged with.

``--map auto`` builds the mapping from the two layouts: a target tensor is paired with the source tensor of the
same core name (``cmaam.io.names``: ``model.layers.N``, ``model.language_model.layers.N`` and
``language_model.model.layers.N`` are one name) when both layouts put it in the same component, and that
component is the language model or the shared embeddings (token embeddings, final norm, lm_head), or the two
models have one model type (then vision tower and bridge pair up too). So a text LLM maps onto a VLM's language
model and LLaVA-OneVision-Qwen2's language model onto Qwen2-VL's, while vision towers and bridges of different
families never pair. ``--map FILE.yaml`` gives rules instead (docs/cross_model.md). Target tensors without a
source are kept from the target; shapes must agree except the vocabulary rows of embedding / lm_head tensors,
which are matched by token (``cmaam.alignment.vocabulary``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cmaam.alignment.layouts import Layout, get_layout
from cmaam.alignment.layouts.layout import format_names
from cmaam.alignment.vocabulary import VocabularyAlignment, align_rows, load_vocabulary
from cmaam.core.errors import CMAAMError
from cmaam.io.files import read_yaml
from cmaam.io.names import NameIndex
from cmaam.io.views import MappedReader

AUTO = "auto"
SHARED_COMPONENTS = ("language_model", "shared_embedding")  # paired across model types
MAP_FILE_KEYS = {"rules", "auto", "description"}
RULE_KEYS = {"target", "source"}


@dataclass
class MapRule:
    """A target-name pattern (full match) and the source name it maps to (a ``re`` template; None: kept)."""

    target: re.Pattern
    source: str | None


@dataclass
class TensorMapping:
    """target name -> source name for every merged pair, the unpaired names of both sides, vocabulary alignments."""

    source: str
    target: str
    source_type: str | None
    target_type: str | None
    mode: str
    pairs: dict[str, str]
    target_only: list[str]
    source_only: list[str]
    vocabulary: dict[str, VocabularyAlignment] = field(default_factory=dict)
    components: dict[str, str] = field(default_factory=dict)  # target name -> component (for the table)
    source_components: dict[str, str] = field(default_factory=dict)

    @property
    def identity(self) -> bool:
        """True when the pairs are name for name with no row alignment (a plain same-architecture merge)."""
        return all(t == s for t, s in self.pairs.items()) and \
            all(v.alignment is None for v in self.vocabulary.values())

    def view(self, source_reader, target_reader) -> MappedReader:
        """The source seen in the target's names and shapes (what the merges read)."""
        rows = {name: v.alignment for name, v in self.vocabulary.items() if v.alignment is not None}
        return MappedReader(source_reader, target_reader, self.pairs, rows)

    def component_table(self) -> dict[str, dict[str, int]]:
        """Per component: tensors mapped, kept from the target, and source tensors left out."""
        mapped = Counter(self.components[name] for name in self.pairs)
        kept = Counter(self.components[name] for name in self.target_only)
        unused = Counter(self.source_components.get(name, "other") for name in self.source_only)
        names = list(dict.fromkeys([*self.components.values(), *unused]))
        return {name: {"mapped": mapped[name], "kept_from_target": kept[name], "source_only": unused[name]}
                for name in names}

    def summary(self) -> dict:
        """JSON data for reports: counts, per-component table, vocabulary rows, the unpaired names."""
        return {
            "mode": self.mode, "source_type": self.source_type, "target_type": self.target_type,
            "mapped": len(self.pairs), "renamed": sum(t != s for t, s in self.pairs.items()),
            "target_only": len(self.target_only), "source_only": len(self.source_only),
            "components": self.component_table(),
            "vocabulary": {name: v.summary() for name, v in self.vocabulary.items()},
            "target_only_names": self.target_only, "source_only_names": self.source_only,
        }

    def table(self) -> str:
        """The mapping summary printed by check and merge: a component table, then vocabulary rows."""
        lines = [f"mapping {self.mode}: source {self.source} ({self.source_type}) -> target {self.target} "
                 f"({self.target_type})",
                 f"{'component':<20} {'mapped':>8} {'kept (target only)':>19} {'source only':>12}"]
        for component, counts in self.component_table().items():
            lines.append(f"{component:<20} {counts['mapped']:>8} {counts['kept_from_target']:>19} "
                         f"{counts['source_only']:>12}")
        lines.append(f"{'total':<20} {len(self.pairs):>8} {len(self.target_only):>19} {len(self.source_only):>12}")
        for name, vocabulary in self.vocabulary.items():
            how = "same tokenizer, row by row" if vocabulary.alignment is None else "matched by token"
            lines.append(f"vocabulary {name}: {vocabulary.matched} of {vocabulary.target_rows} target rows "
                         f"merged ({how}), {vocabulary.kept} kept from the target, {vocabulary.source_unused} of "
                         f"{vocabulary.source_rows} source rows unused")
        if self.target_only:
            lines.append(f"kept from the target: {format_names(self.target_only, 5)}")
        if self.source_only:
            lines.append(f"source only (not merged): {format_names(self.source_only, 5)}")
        return "\n".join(lines)


def load_map_file(path: str | Path) -> tuple[list[MapRule], bool]:
    """Rules of a ``--map`` YAML file (format in docs/cross_model.md) and whether unmatched names map automatically."""
    path = Path(path)
    data = read_yaml(path, "no such mapping file")
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise CMAAMError(f"{path}: expected a mapping with a 'rules' list")
    unknown = sorted(set(data) - MAP_FILE_KEYS)
    if unknown:
        raise CMAAMError(f"{path}: unknown key(s) {', '.join(map(str, unknown))} "
                         f"(allowed: {', '.join(sorted(MAP_FILE_KEYS))})")
    rules = []
    for index, entry in enumerate(data["rules"]):
        where = f"{path}: rule {index + 1}"
        if not isinstance(entry, dict) or not isinstance(entry.get("target"), str) or "source" not in entry:
            raise CMAAMError(f"{where}: expected 'target' (a regex) and 'source' (a name template or null)")
        if set(entry) - RULE_KEYS:
            raise CMAAMError(f"{where}: unknown key(s) {', '.join(sorted(map(str, set(entry) - RULE_KEYS)))}")
        if entry["source"] is not None and not isinstance(entry["source"], str):
            raise CMAAMError(f"{where}: 'source' must be a name template or null")
        try:
            rules.append(MapRule(re.compile(entry["target"]), entry["source"]))
        except re.error as error:
            raise CMAAMError(f"{where}: invalid regular expression ({error})") from None
    auto = data.get("auto", True)
    if not isinstance(auto, bool):
        raise CMAAMError(f"{path}: 'auto' must be true or false")
    return rules, auto


def auto_pairs(source, target, source_layout: Layout, target_layout: Layout, names: list[str]) -> dict[str, str]:
    """Pairs by core name within one component (shared components only across model types)."""
    same_type = source_layout.model_type == target_layout.model_type
    index = NameIndex(source.keys())
    pairs = {}
    for name in names:
        found = index.find(name)
        if found is None:
            continue
        component = target_layout.classify(name).component
        if source_layout.classify(found).component != component:
            continue
        if same_type or component in SHARED_COMPONENTS:
            pairs[name] = found
    return pairs


def tied_lm_head(source, target, target_layout: Layout, pairs: dict[str, str]) -> None:
    """A source with tied embeddings stores no lm_head: the target's lm_head pairs with its token embedding."""
    config = source.config
    tied = config.get("tie_word_embeddings", (config.get("text_config") or {}).get("tie_word_embeddings"))
    if not tied:
        return
    embedding = NameIndex(source.keys()).find("model.embed_tokens.weight")
    for name in target.keys():
        if name not in pairs and name.rsplit(".", 2)[-2:] == ["lm_head", "weight"] and embedding is not None:
            pairs[name] = embedding


def vocabulary_tensors(target_layout: Layout, names: list[str]) -> set[str]:
    """The tensors whose rows are tokens: the input embedding and lm_head."""
    found = {name for name in names if name.endswith("lm_head.weight")}
    embedding = target_layout.input_embedding(names)
    return found | ({embedding} if embedding else set())


# language-model families: a VLM's text_config.model_type (or the text LLM's model_type) -> family
LANGUAGE_FAMILIES = {"qwen2_vl": "qwen2", "qwen2_5_vl": "qwen2", "qwen2_vl_text": "qwen2", "qwen2_5_vl_text": "qwen2"}


def language_family(config: dict) -> str | None:
    """The family of a model's language model: its text_config's model_type, else its own (None if unknown)."""
    text = config.get("text_config")
    declared = text.get("model_type") if isinstance(text, dict) and text.get("model_type") else config.get("model_type")
    return LANGUAGE_FAMILIES.get(declared, declared) if isinstance(declared, str) else None


def check_families(source, target) -> None:
    """Automatic mapping pairs language models of one family only (a Qwen2 LM with a Llama LM is refused)."""
    families = language_family(source.config), language_family(target.config)
    if None not in families and families[0] != families[1]:
        raise CMAAMError(f"source is a {source.model_type!r} model with a {families[0]} language model but target "
                         f"is {target.model_type!r} with a {families[1]} one: both must have one architecture "
                         "(map tensors explicitly with --map FILE.yaml)")


def build_mapping(source, target, spec: str | Path = AUTO, target_layout: Layout | None = None) -> TensorMapping:
    """The mapping of ``source`` onto ``target`` (readers): ``spec`` is 'auto' or a YAML mapping file.

    Raises a CMAAMError naming the tensor when a pair's shapes differ other than in vocabulary rows, and when
    nothing at all pairs up.
    """
    if str(spec) == AUTO:
        rules, auto, mode = [], True, AUTO
    else:
        rules, auto = load_map_file(spec)
        mode = f"file {spec}"
    source_layout = _layout(source, None)
    target_layout = target_layout or _layout(target, None)
    names = list(target.keys())
    target_infos = target_layout.classify_all(names)
    source_infos = source_layout.classify_all(source.keys())
    pairs = _rule_pairs(rules, source, names, spec)
    unruled = [name for name in names if not any(rule.target.fullmatch(name) for rule in rules)]
    if auto:
        check_families(source, target)
        pairs.update(auto_pairs(source, target, source_layout, target_layout, unruled))
        tied_lm_head(source, target, target_layout, pairs)
    pairs = {name: pairs[name] for name in names if name in pairs}
    if not pairs:
        raise CMAAMError(f"no tensor of {source.path} ({source_layout.model_type}) maps onto {target.path} "
                         f"({target_layout.model_type}); give the pairs with --map FILE.yaml")
    vocabulary = _check_shapes(source, target, target_layout, pairs)
    used = set(pairs.values())
    return TensorMapping(
        str(source.path), str(target.path), source_layout.model_type, target_layout.model_type, mode, pairs,
        target_only=[name for name in names if name not in pairs],
        source_only=[name for name in source.keys() if name not in used], vocabulary=vocabulary,
        components={name: info.component for name, info in target_infos.items()},
        source_components={name: info.component for name, info in source_infos.items()})


def _layout(reader, layout: Layout | None) -> Layout:
    """The built-in layout of a reader's config; the error names the model."""
    try:
        return layout or get_layout(config=reader.config)
    except CMAAMError as error:
        raise CMAAMError(f"{reader.path}: {error}") from None


def _rule_pairs(rules: list[MapRule], source, names: list[str], spec) -> dict[str, str]:
    pairs = {}
    for name in names:
        rule = next((rule for rule in rules if rule.target.fullmatch(name)), None)
        if rule is None or rule.source is None:
            continue
        try:
            source_name = rule.target.sub(rule.source, name)
        except (re.error, IndexError) as error:
            raise CMAAMError(f"{spec}: rule {rule.target.pattern!r}: bad source template ({error})") from None
        if source_name not in source:
            raise CMAAMError(f"{spec}: {name} maps to {source_name!r}, which {source.path} does not have")
        pairs[name] = source_name
    return pairs


def _check_shapes(source, target, target_layout: Layout, pairs: dict[str, str]) -> dict[str, VocabularyAlignment]:
    """One error naming the first pair whose shapes differ other than in vocabulary rows; the row alignments."""
    vocabulary_names = vocabulary_tensors(target_layout, list(target.keys()))
    vocabularies: dict[str, VocabularyAlignment] = {}
    tokenizers = None
    for name, source_name in pairs.items():
        target_shape, source_shape = target.shape(name), source.shape(source_name)
        is_vocabulary = name in vocabulary_names and len(target_shape) == 2
        if target_shape != source_shape and not (is_vocabulary and target_shape[1:] == source_shape[1:]):
            raise CMAAMError(f"shapes differ for {name!r}: target {target_shape} vs source {source_name} "
                             f"{source_shape} (only vocabulary rows may differ)")
        if is_vocabulary:
            if tokenizers is None:
                tokenizers = (load_vocabulary(target.reference_folder), load_vocabulary(source.reference_folder))
            vocabularies[name] = align_rows(*tokenizers, target_shape[0], source_shape[0], name)
    return vocabularies


def mapped_source(source, target, spec: str | Path = AUTO, target_layout: Layout | None = None):
    """(reader to merge from, mapping or None): the source itself for a plain same-architecture pair (same model
    type, ``--map auto``, shapes agreeing on the shared names), else its mapped view onto the target."""
    if str(spec) == AUTO and source.model_type == target.model_type and all(
            source.shape(name) == target.shape(name) for name in target.keys() if name in source):
        return source, None
    mapping = build_mapping(source, target, spec, target_layout)
    return mapping.view(source, target), mapping


def layout_mapper(map_spec: str | Path = AUTO):
    """``mapper(model, reference)`` for the runners that take one (mergekit configs, sweeps): the model itself,
    or its view in the reference's layout when it needs a mapping (the summary is printed)."""
    def mapper(model, reference):
        view, mapping = mapped_source(model, reference, map_spec)
        if mapping is not None:
            print(mapping.table())
        return view
    return mapper
