"""Built-in rule tables, each accepting the transformers-4 hub names and the transformers-5 names.

Tables are composed from per-module pieces (vision tower, bridge, language model) so that every
architecture states only what is its own. Rules are ordered: the first match wins.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

from cmaam.core.errors import CMAAMError
from cmaam.alignment.layouts.layout import Layout
from cmaam.alignment.layouts.rules import Rule

LAYER = r"\.(\d+)\."
# language-model prefixes: hub text LLMs and Qwen2-VL (model.), LLaVA hub (language_model.model.),
# transformers-5 (model.language_model.), base-model state dicts (language_model.)
VLM_LANGUAGE_PREFIX = r"(?:model\.language_model\.|language_model\.model\.|language_model\.|model\.)"
TEXT_LANGUAGE_PREFIX = r"model\."


def language_rules(prefix: str) -> list[Rule]:
    """A Llama-style decoder: token embeddings, final norm and lm_head are shared, layers are the LLM."""
    return [
        Rule(prefix + r"embed_tokens\.weight", "shared_embedding", input_embedding=True),
        Rule(prefix + r"norm\.weight", "shared_embedding"),
        Rule(r"(?:language_model\.)?lm_head\.weight", "shared_embedding"),
        Rule(prefix + r"layers" + LAYER + r".+", "language_model", layer=1),
    ]


def vision_rules(blocks: str, other: str, bridge_output: str, bridge: str) -> list[Rule]:
    """A vision tower (``blocks`` prefix of its numbered layers, ``other`` tensors) and its bridge into the LLM."""
    return [
        Rule(blocks + LAYER + r".+", "vision_encoder", layer=1),
        Rule(other, "vision_encoder"),
        Rule(bridge_output, "cross_modal_bridge", bridge_output=True),
        Rule(bridge, "cross_modal_bridge"),
    ]


def qwen2_vl_rules() -> list[Rule]:
    """Qwen2-VL / Qwen2.5-VL: ``visual.blocks.k`` ViT, ``visual.merger`` bridge (its mlp.2 feeds the LLM)."""
    visual = r"(?:model\.)?visual\."
    return [
        *vision_rules(visual + r"blocks", visual + r"patch_embed\..+", visual + r"merger\.mlp\.2\.weight",
                      visual + r"merger\..+"),
        *language_rules(VLM_LANGUAGE_PREFIX),
    ]


def llava_rules(image_newline: bool = False) -> list[Rule]:
    """LLaVA family: CLIP/SigLIP ``vision_tower``, two-layer ``multi_modal_projector`` (linear_2 feeds the LLM)."""
    tower = r"(?:model\.)?vision_tower\.(?:vision_model\.)?"
    projector = r"(?:model\.)?multi_modal_projector\."
    rules = vision_rules(tower + r"encoder\.layers", tower + r"(?:embeddings|pre_layrnorm|post_layernorm|head)\..+",
                         projector + r"linear_2\.weight", projector + r"linear_[12]\.(?:weight|bias)")
    if image_newline:
        rules.append(Rule(r"(?:model\.)?image_newline", "cross_modal_bridge"))
    return rules + language_rules(VLM_LANGUAGE_PREFIX)


def cogvlm_rules() -> list[Rule]:
    """CogVLM / CogVLM2: EVA-CLIP ``model.vision.transformer``, GLU adapter, visual experts in every LLM layer.

    The visual-expert attention and MLP (``vision_expert_*``, ``vision_mlp``) only process image tokens and
    are the weights CogVLM trains for alignment while the LLM stays frozen: cross_modal_bridge, stack
    ``visual_expert``, layer k of the LLM.
    """
    vision = r"model\.vision\."
    return [
        *vision_rules(vision + r"transformer\.layers", vision + r"patch_embedding\..+",
                      vision + r"linear_proj\.dense_4h_to_h\.weight", vision + r"(?:linear_proj\..+|conv\..+|boi|eoi)"),
        Rule(r"model\.layers" + LAYER + r"(?:self_attn\.vision_expert_\w+|mlp\.vision_mlp)\..+",
             "cross_modal_bridge", "visual_expert", layer=1),
        *language_rules(TEXT_LANGUAGE_PREFIX),
    ]


def mplug_owl2_rules() -> list[Rule]:
    """mPLUG-Owl2: ViT ``vision_model``, ``visual_abstractor`` (cross-attention layers + visual_fc into the LLM),
    modality-adaptive LLM layers whose ``multiway.1`` copies (k/v projections, norms) serve visual tokens.

    ``multiway.1`` weights are cross_modal_bridge (stack ``visual_expert``); ``multiway.0`` (text path) and
    the shared q/o/MLP weights are the language model.
    """
    return [
        *vision_rules(r"model\.vision_model\.encoder\.layers",
                      r"model\.vision_model\.(?:embeddings|post_layernorm)\..+",
                      r"model\.visual_abstractor\.visual_fc\.weight",
                      r"model\.visual_abstractor\.(?:visual_fc\.bias|query_embeds|vit_eos)"),
        Rule(r"model\.visual_abstractor\.encoder\.layers" + LAYER + r".+", "cross_modal_bridge", "abstractor", layer=1),
        Rule(r"model\.layers" + LAYER + r".+\.multiway\.1\..+", "cross_modal_bridge", "visual_expert", layer=1),
        *language_rules(TEXT_LANGUAGE_PREFIX),
    ]


def text_rules() -> list[Rule]:
    """Decoder-only LLMs with the Llama module layout (``model.layers.k``, ``model.embed_tokens``, ``lm_head``)."""
    return language_rules(TEXT_LANGUAGE_PREFIX)


TEXT_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2", "phi3")

BUILTIN: dict[str, tuple[Callable[[], list[Rule]], str]] = {
    "qwen2_vl": (qwen2_vl_rules, "Qwen2-VL"),
    "qwen2_5_vl": (qwen2_vl_rules, "Qwen2.5-VL"),
    "llava": (llava_rules, "LLaVA-1.5"),
    "llava_next": (lambda: llava_rules(image_newline=True), "LLaVA-1.6 (LLaVA-NeXT)"),
    "llava_onevision": (lambda: llava_rules(image_newline=True), "LLaVA-OneVision"),
    "cogvlm": (cogvlm_rules, "CogVLM / CogVLM2 (remote code)"),
    "mplug_owl2": (mplug_owl2_rules, "mPLUG-Owl2 (remote code)"),
    **{name: (text_rules, f"text-only {name}") for name in TEXT_TYPES},
}

# other spellings (compared after lower-casing and dropping every non-alphanumeric character)
ALIASES = {"mplugowl": "mplug_owl2", "cogvlm2": "cogvlm", "llavaov": "llava_onevision", "llavav16": "llava_next"}

ARCHITECTURES = {
    "Qwen2VLForConditionalGeneration": "qwen2_vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
    "LlavaForConditionalGeneration": "llava",
    "LlavaNextForConditionalGeneration": "llava_next",
    "LlavaOnevisionForConditionalGeneration": "llava_onevision",
    "CogVLMForCausalLM": "cogvlm",
    "MPLUGOwl2LlamaForCausalLM": "mplug_owl2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "GemmaForCausalLM": "gemma",
    "Gemma2ForCausalLM": "gemma2",
    "Phi3ForCausalLM": "phi3",
}


@lru_cache(maxsize=None)
def builtin_layout(model_type: str) -> Layout:
    """The Layout of a canonical built-in model type (built once, regexes compiled once)."""
    build, description = BUILTIN[model_type]
    return Layout(model_type, tuple(build()), description)


def normalize_type_name(name: str) -> str:
    """Lower-case ``name`` without non-alphanumeric characters (``Qwen2.5-VL`` -> ``qwen25vl``)."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


SPELLINGS = {**{normalize_type_name(name): name for name in BUILTIN}, **ALIASES}


def list_model_types() -> list[str]:
    """The canonical names of the built-in layouts."""
    return list(BUILTIN)


def canonical_model_type(model_type: str) -> str:
    """The built-in name of ``model_type`` (any case, ``-``/``_``/``.`` ignored, aliases accepted)."""
    canonical = SPELLINGS.get(normalize_type_name(model_type))
    if canonical is None:
        raise CMAAMError(f"unknown model type {model_type!r}; built-in layouts: {', '.join(BUILTIN)} "
                         "(or describe the architecture in a YAML rules file: --rules-file, see docs/layouts.md)")
    return canonical
