"""Tiny random models built from transformers configs: the built-in default for demos, tests and benches.

Nothing is downloaded: the tokenizer is a byte-level BPE with no merges (any UTF-8 text, Korean
included), and processors are assembled from local classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cmaam.core.errors import CMAAMError, load_errors
from cmaam.io.processors import save_processor

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>", "<image>", "<video>", "<pad>",
]
CAUSAL_LM_TYPES = ("llama", "mistral", "qwen2", "qwen3")
VLM_TYPES = ("qwen2_vl", "qwen2_5_vl", "llava", "llava_onevision")
_IMAGE_PLACEHOLDER = {"qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
                      "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>", "llava": "<image>",
                      "llava_onevision": "<image>"}


def chat_template(image_placeholder: str = "<|vision_start|><|image_pad|><|vision_end|>") -> str:
    """A ChatML template (Qwen style) whose image entries expand to ``image_placeholder``."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for content in message['content'] %}"
        "{% if content['type'] == 'image' %}" + image_placeholder +
        "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def build_tokenizer(image_placeholder: str = _IMAGE_PLACEHOLDER["qwen2_vl"]):
    """A byte-level tokenizer (256 byte tokens + ChatML and vision special tokens), no training needed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    alphabet = ByteLevel.alphabet()
    vocab = {symbol: index for index, symbol in enumerate(sorted(alphabet))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>", pad_token="<pad>", bos_token=None, unk_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|im_end|>", "<pad>")],
        chat_template=chat_template(image_placeholder),
        padding_side="left",
    )
    extra = [t for t in SPECIAL_TOKENS if t not in ("<|im_end|>", "<pad>")]
    tokenizer.add_special_tokens({"additional_special_tokens": extra})
    return tokenizer


@dataclass
class TinySize:
    """Dimensions of a tiny model."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vision_hidden_size: int = 32
    vision_layers: int = 2
    vision_heads: int = 4

    def validate(self) -> None:
        """One-line errors for sizes transformers would reject with a traceback (or build wrongly)."""
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CMAAMError(f"tiny model: {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise CMAAMError(f"tiny model: hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise CMAAMError(f"tiny model: num_attention_heads {self.num_attention_heads} is not divisible by "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if (self.hidden_size // self.num_attention_heads) % 2:
            raise CMAAMError(f"tiny model: the head size hidden_size / num_attention_heads = "
                             f"{self.hidden_size // self.num_attention_heads} must be even (rotary embeddings)")
        if self.vision_hidden_size % self.vision_heads:
            raise CMAAMError(f"tiny model: vision_hidden_size {self.vision_hidden_size} is not divisible by "
                             f"vision_heads {self.vision_heads}")


def _seeded(seed: int):
    torch.manual_seed(seed)


def _text_config(model_type: str, size: TinySize, tokenizer) -> dict:
    return dict(
        vocab_size=len(tokenizer), hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers, num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads, max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        tie_word_embeddings=False,
        **({"head_dim": size.hidden_size // size.num_attention_heads} if model_type == "qwen3" else {}),
    )


def build_tiny_causal_lm(output: str | Path, model_type: str = "llama", seed: int = 0,
                         size: TinySize | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Save a random causal LM (llama, mistral, qwen2 or qwen3) with a byte-level tokenizer to ``output``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_type not in CAUSAL_LM_TYPES:
        raise CMAAMError(f"unknown tiny causal LM type {model_type!r} (choose {', '.join(CAUSAL_LM_TYPES)})")
    size = size or TinySize()
    size.validate()
    tokenizer = build_tokenizer()
    config = AutoConfig.for_model(model_type, **_text_config(model_type, size, tokenizer))
    _seeded(seed)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with load_errors(output, action="write"):
        model.save_pretrained(output)
        tokenizer.save_pretrained(output)
    return Path(output)


def _vlm_config(model_type: str, size: TinySize, tokenizer):
    from transformers import AutoConfig

    text = _text_config(model_type, size, tokenizer)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        half = size.hidden_size // size.num_attention_heads // 2
        section = [half - 2 * (half // 4), half // 4, half // 4]
        text["rope_scaling"] = {"type": "mrope", "rope_type": "default", "mrope_section": section}
        patches = dict(depth=size.vision_layers, num_heads=size.vision_heads, patch_size=14, spatial_merge_size=2,
                       temporal_patch_size=2, in_channels=3)
        if model_type == "qwen2_vl":
            vision = dict(patches, embed_dim=size.vision_hidden_size, hidden_size=size.hidden_size, mlp_ratio=2)
        else:  # Qwen2.5-VL: gated MLP blocks, window attention with the last block full
            vision = dict(patches, hidden_size=size.vision_hidden_size, intermediate_size=2 * size.vision_hidden_size,
                          out_hidden_size=size.hidden_size, window_size=56,
                          fullatt_block_indexes=[size.vision_layers - 1])
        return AutoConfig.for_model(
            model_type, text_config=dict(text, model_type=f"{model_type}_text"), vision_config=vision,
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
            tie_word_embeddings=False,
        )
    if model_type == "llava":
        vision = dict(model_type="clip_vision_model", hidden_size=size.vision_hidden_size,
                      intermediate_size=2 * size.vision_hidden_size, num_hidden_layers=size.vision_layers,
                      num_attention_heads=size.vision_heads, image_size=56, patch_size=14, projection_dim=32)
        return AutoConfig.for_model("llava", vision_config=vision, text_config=dict(text, model_type="llama"),
                                    image_token_index=ids["<image>"], vision_feature_layer=-1,
                                    vision_feature_select_strategy="default", image_seq_length=16,
                                    tie_word_embeddings=False)
    if model_type == "llava_onevision":
        vision = dict(model_type="siglip_vision_model", hidden_size=size.vision_hidden_size,
                      intermediate_size=2 * size.vision_hidden_size, num_hidden_layers=size.vision_layers,
                      num_attention_heads=size.vision_heads, image_size=56, patch_size=14)
        return AutoConfig.for_model("llava_onevision", vision_config=vision,
                                    text_config=dict(text, model_type="qwen2"), image_token_index=ids["<image>"],
                                    video_token_index=ids["<video>"], vision_feature_layer=-1,
                                    vision_aspect_ratio="anyres_max_9", image_grid_pinpoints=[[56, 56]],
                                    tie_word_embeddings=False)
    raise CMAAMError(f"unknown tiny VLM type {model_type!r} (choose {', '.join(VLM_TYPES)})")


def build_processor(model_type: str = "qwen2_vl"):
    """The processor (image processor + byte-level tokenizer + chat template) for a tiny VLM."""
    tokenizer = build_tokenizer(_IMAGE_PLACEHOLDER.get(model_type, "<image>"))
    template = chat_template(_IMAGE_PLACEHOLDER.get(model_type, "<image>"))
    if model_type in ("qwen2_vl", "qwen2_5_vl"):  # one image path (Qwen2.5-VL adds only video timing)
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
            Qwen2VLImageProcessorPil,
        )

        from cmaam.io.processors import build_qwen2vl_processor

        image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
        return build_qwen2vl_processor(image_processor, tokenizer, template)
    if model_type == "llava":
        from transformers import LlavaProcessor
        from transformers.models.clip.image_processing_pil_clip import (
            CLIPImageProcessorPil,
        )

        image_processor = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
        return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                              num_additional_image_tokens=1, vision_feature_select_strategy="default",
                              chat_template=template)
    return None


def build_tiny_vlm(output: str | Path, model_type: str = "qwen2_vl", seed: int = 0, size: TinySize | None = None,
                   dtype: torch.dtype = torch.float32, with_processor: bool = True) -> Path:
    """Save a random VLM (qwen2_vl, qwen2_5_vl, llava, llava_onevision) and, where supported, its processor."""
    from transformers import AutoModelForImageTextToText

    size = size or TinySize()
    size.validate()
    tokenizer = build_tokenizer(_IMAGE_PLACEHOLDER.get(model_type, "<image>"))
    config = _vlm_config(model_type, size, tokenizer)
    _seeded(seed)
    model = AutoModelForImageTextToText.from_config(config).to(dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = build_processor(model_type) if with_processor else None
    with load_errors(output, action="write"):
        model.save_pretrained(output)
        if processor is not None:
            save_processor(processor, output)
        else:
            tokenizer.save_pretrained(output)
    return Path(output)


def write_tiny_model(output: str | Path, model_type: str = "qwen2_vl", seed: int = 0, size: TinySize | None = None,
                     overwrite: bool = False) -> Path:
    """Build a tiny random model (causal LM or VLM, by ``model_type``) into ``output``, atomically."""
    from cmaam.io.atomic import atomic_directory

    if model_type not in CAUSAL_LM_TYPES + VLM_TYPES:
        raise CMAAMError(f"unknown tiny model type {model_type!r} (choose {', '.join(CAUSAL_LM_TYPES + VLM_TYPES)})")
    size = size or TinySize()
    size.validate()
    with atomic_directory(output, overwrite=overwrite, inputs=()) as folder:
        if model_type in CAUSAL_LM_TYPES:
            build_tiny_causal_lm(folder, model_type, seed, size)
        else:
            build_tiny_vlm(folder, model_type, seed, size)
    return Path(output)


def perturb_model(source: str | Path, output: str | Path, scale: float = 0.02, seed: int = 1,
                  only: str | None = None) -> Path:
    """Copy a model folder adding seeded Gaussian noise (relative to each tensor's std) to float tensors.

    Stands in for a fine-tuned checkpoint in tests; ``only`` restricts the noise to names containing it.
    """
    from cmaam.io import CheckpointReader, write_state_dict

    reader = CheckpointReader(source)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in reader.keys():
        tensor = reader.get(name)
        if tensor.is_floating_point() and (only is None or only in name):
            spread = tensor.float().std().item() if tensor.numel() > 1 else 1.0
            noise = torch.randn(tensor.shape, generator=generator) * scale * (spread or 1.0)
            tensor = (tensor.float() + noise).to(tensor.dtype)
        tensors[name] = tensor
    return write_state_dict(output, tensors, reference=source)


def build_tiny_adapter(base: str | Path, output: str | Path, target_modules: list[str] | str,
                       seed: int = 0, modules_to_save: list[str] | None = None, scale: float = 0.05,
                       **lora_options) -> Path:
    """Save a peft LoRA adapter of ``base`` with seeded random A and B (and perturbed modules_to_save copies).

    Stands in for a LoRA fine-tune in tests; ``lora_options`` go to ``peft.LoraConfig`` (r, lora_alpha,
    use_rslora, rank_pattern, fan_in_fan_out, ...).
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(base)
    model_class = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    model = model_class.from_pretrained(base, dtype=torch.float32)
    options = {"r": 4, "lora_alpha": 8, **lora_options}
    peft_model = get_peft_model(model, LoraConfig(target_modules=target_modules, modules_to_save=modules_to_save,
                                                  init_lora_weights=False, **options))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                spread = parameter.std().item() if parameter.numel() > 1 else 1.0
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale * (spread or 1.0))
    with load_errors(output, action="write"):
        peft_model.save_pretrained(output)
    return Path(output)


def retokenize_model(source: str | Path, output: str | Path, drop: list[str], add: list[str],
                     seed: int = 0) -> Path:
    """Copy a tiny causal LM under another tokenizer: ``drop`` tokens removed, ``add`` tokens added, every BPE id
    shuffled (seeded), special tokens numbered after them. Embedding and lm_head rows move with their tokens; the
    added tokens get seeded random rows. Stands in for a model of the same family with another vocabulary.
    """
    import json

    from cmaam.io import CheckpointReader, write_state_dict

    reader = CheckpointReader(source)
    tokenizer = json.loads((Path(source) / "tokenizer.json").read_text(encoding="utf-8"))
    old_ids = {**tokenizer["model"]["vocab"], **{t["content"]: t["id"] for t in tokenizer["added_tokens"]}}
    vocab = [token for token in tokenizer["model"]["vocab"] if token not in drop] + list(add)
    order = torch.randperm(len(vocab), generator=torch.Generator().manual_seed(seed)).tolist()
    tokenizer["model"]["vocab"] = {token: order[index] for index, token in enumerate(vocab)}
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if t["content"] not in drop]
    for offset, entry in enumerate(tokenizer["added_tokens"]):
        entry["id"] = len(vocab) + offset
    new_ids = {**tokenizer["model"]["vocab"], **{t["content"]: t["id"] for t in tokenizer["added_tokens"]}}
    generator = torch.Generator().manual_seed(seed + 1)
    tensors = {}
    for name in reader.keys():
        tensor = reader.get(name)
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            rows = torch.randn(len(new_ids), tensor.shape[1], generator=generator).to(tensor.dtype) * tensor.std()
            for token, new_id in new_ids.items():
                if token in old_ids:
                    rows[new_id] = tensor[old_ids[token]]
            tensor = rows
        tensors[name] = tensor
    config = {**reader.config, "vocab_size": len(new_ids)}
    special = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    for key, token in (("eos_token_id", "<|im_end|>"), ("pad_token_id", "<pad>")):
        if token in special:
            config[key] = special[token]
    write_state_dict(output, tensors, reference=source, config=config)
    (Path(output) / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    return Path(output)
