"""Write the hub name lists in this folder from the architectures' module structure.

Sources: transformers' modeling code (Qwen2-VL, Qwen2.5-VL, LLaVA, LLaVA-NeXT, LLaVA-OneVision, CLIP,
SigLIP), THUDM's remote code for CogVLM/CogVLM2 and the mPLUG-Owl2 conversion script (its state-dict
keys). Run ``python tests/alignment/layouts/data/generate_name_lists.py`` to rewrite them.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent


def llama_layer(prefix: str, bias: bool = False) -> list[str]:
    names = [f"{prefix}.self_attn.{p}_proj.weight" for p in "qkvo"]
    names += [f"{prefix}.self_attn.{p}_proj.bias" for p in "qkv"] if bias else []
    names += [f"{prefix}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    return names + [f"{prefix}.input_layernorm.weight", f"{prefix}.post_attention_layernorm.weight"]


def decoder(model: str, head: str | None, layers: int, bias: bool = False) -> list[str]:
    names = [f"{model}.embed_tokens.weight", f"{model}.norm.weight"] + ([head] if head else [])
    for index in range(layers):
        names += llama_layer(f"{model}.layers.{index}", bias)
    return names


def clip_layer(prefix: str) -> list[str]:
    modules = ([f"self_attn.{p}_proj" for p in ("q", "k", "v", "out")]
               + ["mlp.fc1", "mlp.fc2", "layer_norm1", "layer_norm2"])
    return [f"{prefix}.{module}.{kind}" for module in modules for kind in ("weight", "bias")]


def qwen2_vl_7b() -> list[str]:
    names = ["visual.patch_embed.proj.weight"]
    for index in range(32):
        modules = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2"]
        names += [f"visual.blocks.{index}.{m}.{kind}" for m in modules for kind in ("weight", "bias")]
    names += [f"visual.merger.{m}.{kind}" for m in ("ln_q", "mlp.0", "mlp.2") for kind in ("weight", "bias")]
    return names + decoder("model", "lm_head.weight", 28, bias=True)


def qwen2_5_vl_3b_transformers5() -> list[str]:
    names = ["model.visual.patch_embed.proj.weight"]
    for index in range(32):
        block = f"model.visual.blocks.{index}"
        modules = ["attn.qkv", "attn.proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
        names += [f"{block}.{m}.{kind}" for m in modules for kind in ("weight", "bias")]
        names += [f"{block}.norm1.weight", f"{block}.norm2.weight"]
    names += ["model.visual.merger.ln_q.weight"]
    names += [f"model.visual.merger.mlp.{i}.{kind}" for i in (0, 2) for kind in ("weight", "bias")]
    return names + decoder("model.language_model", None, 36, bias=True)  # tied embeddings: no lm_head


def llava_hub(vision_layers: int, text_layers: int, clip: bool, image_newline: bool, bias: bool) -> list[str]:
    tower = "vision_tower.vision_model"
    if clip:
        names = [f"{tower}.embeddings.class_embedding", f"{tower}.embeddings.patch_embedding.weight",
                 f"{tower}.embeddings.position_embedding.weight"]
        names += [f"{tower}.{norm}.{kind}" for norm in ("pre_layrnorm", "post_layernorm")
                  for kind in ("weight", "bias")]
    else:  # SigLIP: patch embedding with bias, no class token, no pre-norm, head removed
        names = [f"{tower}.embeddings.patch_embedding.weight", f"{tower}.embeddings.patch_embedding.bias",
                 f"{tower}.embeddings.position_embedding.weight"]
        names += [f"{tower}.post_layernorm.{kind}" for kind in ("weight", "bias")]
    for index in range(vision_layers):
        names += clip_layer(f"{tower}.encoder.layers.{index}")
    names += [f"multi_modal_projector.linear_{i}.{kind}" for i in (1, 2) for kind in ("weight", "bias")]
    names += ["image_newline"] if image_newline else []
    return names + decoder("language_model.model", "language_model.lm_head.weight", text_layers, bias)


def cogvlm(version: int) -> list[str]:
    vision = "model.vision"
    names = [f"{vision}.patch_embedding.proj.weight", f"{vision}.patch_embedding.proj.bias",
             f"{vision}.patch_embedding.cls_embedding", f"{vision}.patch_embedding.position_embedding.weight"]
    for index in range(63):
        modules = ["input_layernorm", "attention.query_key_value", "attention.dense", "mlp.fc1", "mlp.fc2",
                   "post_attention_layernorm"]
        names += [f"{vision}.transformer.layers.{index}.{m}.{kind}" for m in modules for kind in ("weight", "bias")]
    names += [f"{vision}.linear_proj.{m}" for m in ("linear_proj.weight", "norm1.weight", "norm1.bias",
                                                   "dense_h_to_4h.weight", "gate_proj.weight", "dense_4h_to_h.weight")]
    names += [f"{vision}.conv.weight", f"{vision}.conv.bias"] if version == 2 else []
    names += [f"{vision}.boi", f"{vision}.eoi", "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for index in range(32):
        layer = f"model.layers.{index}"
        names += [f"{layer}.input_layernorm.weight", f"{layer}.post_attention_layernorm.weight"]
        for expert in ("language", "vision"):
            names += [f"{layer}.self_attn.{expert}_expert_query_key_value.weight",
                      f"{layer}.self_attn.{expert}_expert_dense.weight"]
            names += [f"{layer}.mlp.{expert}_mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
        names += [f"{layer}.self_attn.vision_expert_query_key_value.bias"] if version == 2 else []
    return names


def mplug_owl2() -> list[str]:
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    for index in range(32):
        layer = f"model.layers.{index}"
        names += [f"{layer}.self_attn.q_proj.weight", f"{layer}.self_attn.o_proj.weight",
                  f"{layer}.self_attn.rotary_emb.inv_freq"]
        names += [f"{layer}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
        for way in (0, 1):
            names += [f"{layer}.self_attn.{p}_proj.multiway.{way}.weight" for p in "kv"]
            names += [f"{layer}.{norm}.multiway.{way}.weight"
                      for norm in ("input_layernorm", "post_attention_layernorm")]
    vision = "model.vision_model"
    names += [f"{vision}.embeddings.cls_token", f"{vision}.embeddings.patch_embed.weight",
              f"{vision}.embeddings.position_embedding"]
    names += [f"{vision}.{norm}.{kind}" for norm in ("embeddings.pre_layernorm", "post_layernorm")
              for kind in ("weight", "bias")]
    for index in range(24):
        modules = ["input_layernorm", "self_attn.query_key_value", "self_attn.dense", "post_attention_layernorm",
                   "mlp.fc1", "mlp.fc2"]
        names += [f"{vision}.encoder.layers.{index}.{m}.{kind}" for m in modules for kind in ("weight", "bias")]
    abstractor = "model.visual_abstractor"
    names += [f"{abstractor}.query_embeds", f"{abstractor}.visual_fc.weight", f"{abstractor}.visual_fc.bias",
              f"{abstractor}.vit_eos"]
    for index in range(6):
        modules = ["attention.query", "attention.key", "attention.value", "norm1", "normk", "output.out_proj",
                   "output.norm2", "output.mlp.w1", "output.mlp.w2", "output.mlp.w3", "output.mlp.ffn_ln"]
        layer = f"{abstractor}.encoder.layers.{index}.crossattention"
        names += [f"{layer}.{m}.{kind}" for m in modules for kind in ("weight", "bias")]
    return names


LISTS = {
    "qwen2_vl_7b_hub.txt": ("Qwen2-VL-7B-Instruct, transformers-4 hub names", qwen2_vl_7b),
    "qwen2_5_vl_3b_transformers5.txt": ("Qwen2.5-VL-3B, transformers-5 names, tied embeddings",
                                        qwen2_5_vl_3b_transformers5),
    "llava_1_5_7b_hub.txt": ("llava-1.5-7b-hf (CLIP ViT-L/14-336 + Vicuna-7B), hub names",
                             lambda: llava_hub(24, 32, clip=True, image_newline=False, bias=False)),
    "llava_1_6_mistral_7b_hub.txt": ("llava-v1.6-mistral-7b-hf (CLIP ViT-L/14-336 + Mistral-7B), hub names",
                                     lambda: llava_hub(24, 32, clip=True, image_newline=True, bias=False)),
    "llava_onevision_qwen2_7b_hub.txt": ("llava-onevision-qwen2-7b-ov-hf (SigLIP so400m, 26 layers + Qwen2-7B), "
                                         "hub names",
                                         lambda: llava_hub(26, 28, clip=False, image_newline=True, bias=True)),
    "cogvlm_chat_hub.txt": ("cogvlm-chat-hf (EVA2-CLIP-E 63 layers + Vicuna-7B with visual experts), hub names",
                            lambda: cogvlm(1)),
    "cogvlm2_llama3_hub.txt": ("cogvlm2-llama3-chat-19B (conv downsampler, biased vision-expert qkv), hub names",
                               lambda: cogvlm(2)),
    "mplug_owl2_llama2_7b_hub.txt": ("mplug-owl2-llama2-7b (ViT-L 24 layers, 6-layer abstractor, multiway LLaMA-2-7B), "
                                     "hub names", mplug_owl2),
}


def main() -> None:
    for file_name, (source, build) in LISTS.items():
        names = build()
        assert len(set(names)) == len(names), file_name
        (HERE / file_name).write_text(f"# {source}\n" + "\n".join(sorted(names)) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
