"""Merging across model types: a text LLM into a VLM's language model, LLaVA-OneVision onto Qwen2-VL, vocabulary
alignment by token, mapping files; the target's vision tower and bridge stay bit-identical."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from cmaam.alignment.alphas import AlphaConfig
from cmaam.alignment.mapping import build_mapping, layout_mapper
from cmaam.alignment.merge import merge_vlm
from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader

class FakeReader:
    """Names, shapes and a config without weights: enough for building a mapping (layouts of models the tiny
    builders do not make, in transformers-4 and -5 spellings)."""

    def __init__(self, path: str, config: dict, shapes: dict[str, tuple[int, ...]]):
        from pathlib import Path

        self.path = self.reference_folder = Path(path)
        self.config = config
        self.shapes = shapes

    @property
    def model_type(self):
        return self.config.get("model_type")

    def keys(self):
        return list(self.shapes)

    def __contains__(self, name):
        return name in self.shapes

    def shape(self, name):
        return self.shapes[name]


def language_model_shapes(prefix: str, lm_head: str = "lm_head.weight", layers: int = 2) -> dict:
    """A two-layer Llama/Qwen2-style language model under ``prefix`` (``model.``, ``model.language_model.``, ...)."""
    shapes = {f"{prefix}embed_tokens.weight": (100, 8), f"{prefix}norm.weight": (8,), lm_head: (100, 8)}
    for layer in range(layers):
        for part, shape in (("self_attn.q_proj.weight", (8, 8)), ("self_attn.k_proj.weight", (4, 8)),
                            ("mlp.down_proj.weight", (8, 16)), ("input_layernorm.weight", (8,))):
            shapes[f"{prefix}layers.{layer}.{part}"] = shape
    return shapes


CPU = ExecutionOptions(device="cpu", progress=False)
TEXT_CONFIG = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}


def merge(source, target, output, **options):
    return merge_vlm(source, target, output, AlphaConfig(strategy="component"), CPU,
                     print_summary=False, **options)


def check_merged_into_vlm(source, target, output, model_class: str):
    """Merge a text LLM into a VLM and check the result: vision tower and bridge bit-identical to the target, mapped
    tensors (1 - a) T + a S, loads strictly with ``model_class`` and answers an image question. Returns the result."""
    import transformers
    from PIL import Image

    from eval.generation import GenerationRequest, HFGenerator

    result = merge(source, target, output)
    mapping = result.mapping
    merged, target_reader, source_reader = (CheckpointReader(p) for p in (output, target, source))
    assert merged.keys() == target_reader.keys()
    for name in mapping.target_only:  # vision tower and bridge: bit-identical to the target
        assert mapping.components[name] in ("vision_encoder", "cross_modal_bridge")
        assert torch.equal(merged.get(name), target_reader.get(name)), name
    alphas = result.plan.tensor_alphas
    assert set(alphas) == set(mapping.pairs) and len(set(alphas.values())) == 2  # one alpha per component
    for name, source_name in mapping.pairs.items():  # language model: (1 - a) T + a S
        expected = (1 - alphas[name]) * target_reader.get(name) + alphas[name] * source_reader.get(source_name)
        assert torch.allclose(merged.get(name), expected, rtol=0, atol=1e-6), name
        if not torch.equal(source_reader.get(source_name), target_reader.get(name)):  # (norms: ones in both)
            assert not torch.equal(merged.get(name), target_reader.get(name)), name
    alphas_file = yaml.safe_load((output / "alphas.yaml").read_text())
    assert alphas_file["mapping"]["mapped"] == len(mapping.pairs)
    assert alphas_file["kept_from_target"] == sorted(mapping.target_only)
    _, loading = getattr(transformers, model_class).from_pretrained(output, output_loading_info=True)
    assert not any(loading[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), loading
    generator = HFGenerator(output, device="cpu", max_new_tokens=5, progress=False)
    assert type(generator.model).__name__ == model_class
    answer = generator.generate([GenerationRequest("What color is this?", image=Image.new("RGB", (56, 56), "red"))])
    assert len(answer) == 1 and isinstance(answer[0], str)
    return result


def test_text_llm_into_qwen2vl(tiny_qwen2, tiny_qwen2vl, tmp_path):
    result = check_merged_into_vlm(tiny_qwen2, tiny_qwen2vl, tmp_path / "merged", "Qwen2VLForConditionalGeneration")
    mapping = result.mapping
    assert (len(mapping.pairs), len(mapping.target_only), len(mapping.source_only)) == (27, 31, 0)


@pytest.mark.parametrize("source_type, target_type, model_class, counts", [
    ("qwen2", "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", (27, 30, 0)),
    ("llama", "llava", "LlavaForConditionalGeneration", (21, 43, 0)),  # hub names: language_model.model.*
])
def test_text_llm_into_other_vlms(source_type, target_type, model_class, counts, tmp_path):
    """Tiny Qwen2.5-VL and LLaVA targets, built and saved by transformers: the same guarantees as for Qwen2-VL."""
    from cmaam.testing.tiny import build_tiny_causal_lm, build_tiny_vlm

    source = build_tiny_causal_lm(tmp_path / "text", source_type, seed=11)
    target = build_tiny_vlm(tmp_path / "vlm", target_type, seed=12)
    result = check_merged_into_vlm(source, target, tmp_path / "merged", model_class)
    mapping = result.mapping
    assert (len(mapping.pairs), len(mapping.target_only), len(mapping.source_only)) == counts
    assert {mapping.components[name] for name in mapping.target_only} == {"vision_encoder", "cross_modal_bridge"}


def test_tokenizer_mismatch_rows_matched_by_token(tiny_qwen2, tiny_qwen2vl, tmp_path, capfd):
    from cmaam.alignment.vocabulary import load_vocabulary
    from cmaam.check import main as check_main
    from cmaam.testing.tiny import retokenize_model

    dropped, added = ["a", "b", "c", "<video>"], [f"<new_{i}>" for i in range(30)]
    source = retokenize_model(tiny_qwen2, tmp_path / "retokenized", drop=dropped, add=added)
    source_ids, target_ids = load_vocabulary(source), load_vocabulary(tiny_qwen2vl)
    assert len(source_ids) == 292 and source_ids["<|im_end|>"] != target_ids["<|im_end|>"]
    assert check_main([str(source), str(tiny_qwen2vl)]) == 0  # the vocabulary overlap, before any merge
    printed = capfd.readouterr().out
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert (f"vocabulary {name}: 262 of 266 target rows merged (matched by token), 4 kept from the target, "
                "30 of 292 source rows unused") in printed
    result = merge(source, tiny_qwen2vl, tmp_path / "merged")
    vocabulary = result.mapping.vocabulary["model.embed_tokens.weight"]
    assert (vocabulary.target_rows, vocabulary.source_rows, vocabulary.matched, vocabulary.kept,
            vocabulary.source_unused) == (266, 292, 262, 4, 30)
    assert result.report["mapping"]["vocabulary"]["lm_head.weight"]["matched"] == 262
    merged, target, source_reader = (CheckpointReader(p) for p in (tmp_path / "merged", tiny_qwen2vl, source))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        alpha = result.plan.tensor_alphas[name]
        out, base, other = merged.get(name), target.get(name), source_reader.get(name)
        for token, target_id in target_ids.items():
            if token in dropped:  # no source row: the target's row, bit for bit
                assert torch.equal(out[target_id], base[target_id]), token
            else:  # the source row of the same token string
                expected = (1 - alpha) * base[target_id] + alpha * other[source_ids[token]]
                assert torch.allclose(out[target_id], expected, rtol=0, atol=1e-6), token


def test_onevision_onto_qwen2vl(tiny_onevision, tiny_qwen2vl, tmp_path, capfd):
    from cmaam.check import main as check_main

    assert check_main([str(tiny_onevision), str(tiny_qwen2vl)]) == 0
    printed = capfd.readouterr().out
    for row in ("shared_embedding            3                   0            0",
                "language_model             24                   0            0",
                "vision_encoder              0                  25           48",
                "cross_modal_bridge          0                   6            5",
                "total                      27                  31           53"):
        assert row in printed
    result = merge(tiny_onevision, tiny_qwen2vl, tmp_path / "merged")
    assert result.mapping.pairs["model.layers.0.self_attn.q_proj.weight"] == \
        "language_model.model.layers.0.self_attn.q_proj.weight"
    merged, target = CheckpointReader(tmp_path / "merged"), CheckpointReader(tiny_qwen2vl)
    assert all(torch.equal(merged.get(n), target.get(n)) for n in result.mapping.target_only)
    assert "image_newline" in result.report["only_in_source"]


@pytest.mark.parametrize("target_type, prefix, lm_head, vision", [
    ("qwen2_vl", "model.", "lm_head.weight", "visual.blocks.0.attn.qkv.weight"),
    ("qwen2_5_vl", "model.language_model.", "lm_head.weight", "model.visual.blocks.0.mlp.gate_proj.weight"),
    ("qwen2_5_vl", "model.", "lm_head.weight", "visual.merger.mlp.0.weight"),
    ("llava", "language_model.model.", "language_model.lm_head.weight", "vision_tower.vision_model.embeddings.x"),
    ("llava", "model.language_model.", "lm_head.weight", "model.multi_modal_projector.linear_1.weight"),
    ("llava_onevision", "model.language_model.", "lm_head.weight", "model.image_newline"),
])
def test_text_llm_onto_every_vlm_layout(target_type, prefix, lm_head, vision):
    """transformers-4 and -5 spellings of each VLM: every language-model tensor mapped, the vision part kept."""
    source = FakeReader("text", TEXT_CONFIG, language_model_shapes("model."))
    shapes = {**language_model_shapes(prefix, lm_head), vision: (8, 8)}
    target = FakeReader("vlm", {"model_type": target_type, "text_config": {"model_type": "qwen2"}}, shapes)
    mapping = build_mapping(source, target)
    assert len(mapping.pairs) == len(source.keys()) and mapping.target_only == [vision]
    assert mapping.pairs[lm_head] == "lm_head.weight" and mapping.pairs[f"{prefix}layers.1.mlp.down_proj.weight"] \
        == "model.layers.1.mlp.down_proj.weight"
    tied = FakeReader("tied", {**TEXT_CONFIG, "tie_word_embeddings": True},
                      {k: v for k, v in source.shapes.items() if k != "lm_head.weight"})
    assert build_mapping(tied, target).pairs[lm_head] == "model.embed_tokens.weight"  # tied: lm_head = embedding


def test_map_file_rules(tiny_qwen2, tiny_qwen2vl, tmp_path):
    rules = tmp_path / "map.yaml"
    rules.write_text(yaml.safe_dump({"auto": False, "rules": [
        {"target": r"model\.layers\.0\.(.+)", "source": r"model.layers.1.\1"},  # layer 1 of S onto layer 0 of T
        {"target": r"model\.layers\.1\..+", "source": None}]}))
    mapping = build_mapping(CheckpointReader(tiny_qwen2), CheckpointReader(tiny_qwen2vl), rules)
    assert len(mapping.pairs) == 12 and all(s.startswith("model.layers.1.") for s in mapping.pairs.values())
    assert mapping.mode.startswith("file") and len(mapping.target_only) == 58 - 12
    result = merge(tiny_qwen2, tiny_qwen2vl, tmp_path / "merged", map_spec=rules)
    merged, target = CheckpointReader(tmp_path / "merged"), CheckpointReader(tiny_qwen2vl)
    assert torch.equal(merged.get("model.layers.1.mlp.up_proj.weight"), target.get("model.layers.1.mlp.up_proj.weight"))
    assert not torch.equal(merged.get("model.layers.0.mlp.up_proj.weight"),
                           target.get("model.layers.0.mlp.up_proj.weight"))
    assert result.report["mapping"]["mode"] == f"file {rules}"


@pytest.mark.parametrize("rules, message", [
    ({"rules": [{"target": "(", "source": "x"}]}, "invalid regular expression"),
    ({"rules": [{"target": r"model\.norm\.weight", "source": "nothing.here"}]}, "which"),
    ({"rules": [], "extra": 1}, "unknown key"),
    ({"rules": [{"target": "x"}]}, "expected 'target'"),
])
def test_bad_map_files(rules, message, tiny_qwen2, tiny_qwen2vl, tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text(yaml.safe_dump(rules))
    with pytest.raises(CMAAMError, match=message):
        build_mapping(CheckpointReader(tiny_qwen2), CheckpointReader(tiny_qwen2vl), path)


def test_one_line_errors_and_no_output(tiny_qwen2vl, tmp_path, cli_error):
    from cmaam.check import main as check_main
    from cmaam.merge import main as merge_main
    from cmaam.testing.tiny import TinySize, build_tiny_causal_lm

    wider = build_tiny_causal_lm(tmp_path / "wider", "qwen2", size=TinySize(intermediate_size=96))
    line = cli_error(merge_main, ["--source", str(wider), "--target", str(tiny_qwen2vl), "--output",
                                  str(tmp_path / "out"), "--no-progress", "--device", "cpu"])
    assert "shapes differ for 'model.layers.0.mlp.down_proj.weight'" in line
    config = json.loads((wider / "config.json").read_text())
    (wider / "config.json").write_text(json.dumps({**config, "model_type": "mystery", "architectures": ["X"]}))
    with pytest.raises(CMAAMError, match=f"{wider}: no built-in layout for model_type 'mystery'"):
        build_mapping(CheckpointReader(wider), CheckpointReader(tiny_qwen2vl))
    assert check_main([str(wider), str(tiny_qwen2vl)]) == 1  # check reports instead: not compatible, no mapping
    assert "no such mapping file" in cli_error(merge_main, [
        "--source", str(wider), "--target", str(tiny_qwen2vl), "--output", str(tmp_path / "out"),
        "--map", str(tmp_path / "missing.yaml")])
    assert not (tmp_path / "out").exists()


def test_mergekit_runner_with_a_mapping(tiny_qwen2, tiny_qwen2vl, tmp_path, cli_error):
    from cmaam.mergekit import main as mergekit_main

    config = tmp_path / "ties.yaml"
    config.write_text(f"merge_method: ties\nbase_model: {tiny_qwen2vl}\nmodels:\n  - model: {tiny_qwen2}\n"
                      "    parameters: {weight: 1.0, density: 1.0}\ndtype: float32\n")
    line = cli_error(mergekit_main, [str(config), str(tmp_path / "out"), "--no-progress"])  # mergekit's failure
    assert "missing tensor 'visual." in line and "types: qwen2, qwen2_vl; --map auto merges them" in line
    assert not (tmp_path / "out").exists()
    assert mergekit_main([str(config), str(tmp_path / "out"), "--map", "auto", "--no-progress"]) == 0
    merged, target, source = (CheckpointReader(p) for p in (tmp_path / "out", tiny_qwen2vl, tiny_qwen2))
    for name in merged.keys():
        if name.startswith("visual."):
            assert torch.equal(merged.get(name), target.get(name)), name
        else:  # density 1, one model, weight 1: ties gives the source
            assert torch.allclose(merged.get(name), source.get(name), rtol=0, atol=1e-6), name


def test_language_families(tiny_llama, tiny_qwen2vl, tmp_path):
    """A Llama LM maps onto LLaVA's (a Llama), not onto Qwen2-VL's (a Qwen2)."""
    from cmaam.testing.tiny import build_tiny_vlm

    llava = build_tiny_vlm(tmp_path / "llava", "llava", with_processor=False)
    mapping = build_mapping(CheckpointReader(tiny_llama), CheckpointReader(llava))
    assert len(mapping.pairs) == len(CheckpointReader(tiny_llama).keys()) and not mapping.source_only
    assert {mapping.components[n] for n in mapping.target_only} == {"vision_encoder", "cross_modal_bridge"}
    with pytest.raises(CMAAMError, match="llama language model but target is 'qwen2_vl' with a qwen2 one"):
        build_mapping(CheckpointReader(tiny_llama), CheckpointReader(tiny_qwen2vl))


def test_sweep_over_a_mapping_keeps_target_rows(tiny_qwen2, tiny_qwen2vl, tmp_path):
    from cmaam.merging.sweep import sweep
    from cmaam.testing.tiny import retokenize_model

    source = retokenize_model(tiny_qwen2, tmp_path / "retokenized", drop=["x", "<image>"], add=["<a>", "<b>"])
    (output,) = sweep(source, tiny_qwen2vl, tmp_path / "sweep", "0.2857", CPU, mapper=layout_mapper())
    merged, target = CheckpointReader(output), CheckpointReader(tiny_qwen2vl)
    vocabulary = json.loads((tiny_qwen2vl / "tokenizer.json").read_text())
    image = next(t["id"] for t in vocabulary["added_tokens"] if t["content"] == "<image>")
    kept = [vocabulary["model"]["vocab"]["x"], image]
    for name in merged.keys():
        if name.startswith("visual."):
            assert torch.equal(merged.get(name), target.get(name)), name
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = target.get(name)[kept]
        assert torch.equal(merged.get(name)[kept], rows)
        assert not torch.equal(0.7143 * rows + 0.2857 * rows, rows)  # what keeping the rows avoids
        assert not torch.equal(merged.get(name), target.get(name))
