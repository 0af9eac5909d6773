"""The figures of docs/cross_model.md, from tiny models built on the spot (CPU, about a minute, nothing downloaded).

    python scripts/cross_model_figures.py [WORK_FOLDER]

1. A tiny Qwen2 text model merged into a tiny Qwen2-VL and a tiny Qwen2.5-VL, a tiny Llama into a tiny LLaVA
   (component strategy): the mapping table, vision and bridge tensors bit-identical to the target, the largest
   |merged - ((1 - a) T + a S)| on mapped tensors, the merged model loaded by its class answering an image question.
2. A tokenizer mismatch (the text model under another tokenizer): row counts, matched rows against (1 - a) T + a S.
3. LLaVA-OneVision onto Qwen2-VL: the mapped/kept table.
4. peft adapters read as inputs against peft's merge_and_unload (largest difference over every tensor).
5. LoRA extraction: reported error against the Eckart-Young optimum, and peft's reload.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch

from cmaam.core.options import ExecutionOptions

CPU = ExecutionOptions(device="cpu", progress=False)


def largest_difference(pairs) -> float:
    return max((float((a.double() - b.double()).abs().max()) for a, b in pairs), default=0.0)


def peft_merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(base)
    model_class = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    return PeftModel.from_pretrained(model_class.from_pretrained(base), adapter).merge_and_unload().state_dict()


def text_into_vlm(work: Path, source: Path, target: Path, label: str) -> None:
    import transformers
    from PIL import Image

    from cmaam.alignment.alphas import AlphaConfig
    from cmaam.alignment.merge import merge_vlm
    from cmaam.io import CheckpointReader
    from eval.generation import GenerationRequest, HFGenerator

    print(f"== 1. {label} (strategy component)")
    output = work / f"{source.name}_into_{target.name}"
    result = merge_vlm(source, target, output, AlphaConfig(strategy="component"), CPU, print_summary=False)
    mapping = result.mapping
    print(mapping.table())
    merged, target_reader, source_reader = (CheckpointReader(p) for p in (output, target, source))
    same = sum(torch.equal(merged.get(n), target_reader.get(n)) for n in mapping.target_only)
    print(f"vision + bridge tensors bit-identical to the target: {same} of {len(mapping.target_only)}")
    alphas = result.plan.tensor_alphas
    print("alphas: " + ", ".join(f"{key} {group.alpha:.4f}" for key, group in result.plan.groups.items()))
    error = largest_difference((merged.get(t), (1 - alphas[t]) * target_reader.get(t) + alphas[t] *
                                source_reader.get(s)) for t, s in mapping.pairs.items())
    print(f"mapped tensors: max |merged - ((1 - a) T + a S)| = {error:.2e} over {len(mapping.pairs)} tensors")
    generator = HFGenerator(output, device="cpu", max_new_tokens=8, progress=False)
    model_class = type(generator.model).__name__
    _, loading = getattr(transformers, model_class).from_pretrained(output, output_loading_info=True)
    problems = sum(len(loading[key]) for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    answer = generator.generate([GenerationRequest("What color is the square?",
                                                   image=Image.new("RGB", (56, 56), (255, 0, 0)))])[0]
    print(f"loaded as {model_class} ({problems} missing, unexpected or mismatched weights); "
          f"answer to an image question: {answer!r}\n")


def tokenizer_mismatch(work: Path, qwen2: Path, qwen2vl: Path) -> None:
    from cmaam.alignment.alphas import AlphaConfig
    from cmaam.alignment.merge import merge_vlm
    from cmaam.alignment.vocabulary import load_vocabulary
    from cmaam.io import CheckpointReader
    from cmaam.testing.tiny import retokenize_model

    print("== 2. tokenizer mismatch: the text model under another tokenizer (4 tokens dropped, 30 added, ids "
          "shuffled)")
    dropped = ["a", "b", "c", "<video>"]
    source = retokenize_model(qwen2, work / "retokenized", drop=dropped, add=[f"<new_{i}>" for i in range(30)])
    result = merge_vlm(source, qwen2vl, work / "retokenized_into_qwen2vl", AlphaConfig(strategy="component"),
                       CPU, print_summary=False)
    for line in result.mapping.table().splitlines():
        if line.startswith("vocabulary"):
            print(line)
    source_ids, target_ids = load_vocabulary(source), load_vocabulary(qwen2vl)
    merged, target, other = (CheckpointReader(p) for p in (work / "retokenized_into_qwen2vl", qwen2vl, source))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        alpha = result.plan.tensor_alphas[name]
        out, base, rows = merged.get(name), target.get(name), other.get(name)
        error = largest_difference((out[i], (1 - alpha) * base[i] + alpha * rows[source_ids[t]])
                                   for t, i in target_ids.items() if t not in dropped)
        kept = sum(torch.equal(out[target_ids[t]], base[target_ids[t]]) for t in dropped)
        print(f"{name}: matched rows max |merged - ((1 - a) T[t] + a S[s])| = {error:.2e}; "
              f"kept rows bit-identical: {kept} of {len(dropped)}")


def onevision_onto_qwen2vl(work: Path, onevision: Path, qwen2vl: Path) -> None:
    from cmaam.alignment.mapping import build_mapping
    from cmaam.io import CheckpointReader

    print("\n== 3. LLaVA-OneVision (SigLIP + Qwen2) -> Qwen2-VL")
    print(build_mapping(CheckpointReader(onevision), CheckpointReader(qwen2vl)).table())


def adapters(work: Path, llama: Path, qwen2vl: Path) -> None:
    from cmaam.io import CheckpointReader
    from cmaam.io.adapters import open_model
    from cmaam.io.names import NameIndex
    from cmaam.testing.tiny import build_tiny_adapter

    print("\n== 4. peft adapters as inputs vs peft merge_and_unload")
    cases = {"llama": (llama, ["q_proj", "v_proj", "down_proj", "embed_tokens"], {}),
             "qwen2_vl": (qwen2vl, r".*(q_proj|v_proj|fc1|patch_embed\.proj|embed_tokens)",
                          {"use_rslora": True, "r": 8, "lora_alpha": 4, "rank_pattern": {"v_proj": 2}})}
    for label, (base, targets, options) in cases.items():
        adapter = build_tiny_adapter(base, work / f"{label}_lora", targets, seed=3, modules_to_save=["lm_head"],
                                     **options)
        reader, plain = open_model(adapter), CheckpointReader(base)
        index = NameIndex(reader.keys())
        reference = peft_merged(base, adapter)
        error = largest_difference((reader.get(index.find(n)), v) for n, v in reference.items())
        changed = sum(not torch.equal(reader.get(n), plain.get(n)) for n in reader.keys())
        print(f"{label}: {len(reference)} tensors compared, {changed} changed by the adapter, "
              f"max |ours - peft| = {error:.2e}")


def extraction(work: Path, llama: Path) -> None:
    from cmaam.io import CheckpointReader
    from cmaam.io.adapters import open_model
    from cmaam.io.names import NameIndex
    from cmaam.merging.lora_extraction import ExtractionOptions, extract_lora
    from cmaam.testing.tiny import perturb_model

    print("\n== 5. LoRA extraction (tiny Llama and a 5% perturbation of it)")
    tuned = perturb_model(llama, work / "llama_ft", 0.05, seed=1)
    base_reader, tuned_reader = CheckpointReader(llama), CheckpointReader(tuned)
    index = NameIndex(tuned_reader.keys())
    for rank in (4, 16, 64):
        report = extract_lora(llama, tuned, work / f"llama_lora_r{rank}", ExtractionOptions(rank=rank), CPU)
        gaps, errors = [], []
        for row in report.modules:
            if row.kind != "lora":
                continue
            name = index.find(row.module + ".weight")
            values = torch.linalg.svdvals(tuned_reader.get(name).double() - base_reader.get(name).double())
            optimum = math.sqrt(float((values[row.rank:] ** 2).sum() / (values ** 2).sum()))
            gaps.append(abs(row.relative_error - optimum))
            errors.append(row.relative_error)
        merged = peft_merged(llama, work / f"llama_lora_r{rank}")
        reader = open_model(work / f"llama_lora_r{rank}")
        roundtrip = largest_difference((reader.get(index.find(n)), v) for n, v in merged.items())
        print(f"rank {rank}: {len(errors)} modules, relative error mean {sum(errors) / len(errors):.4f} "
              f"(max {max(errors):.4f}); max |reported - Eckart-Young optimum| = {max(gaps):.2e}; "
              f"peft reload vs our reader: {roundtrip:.2e}")


def main() -> None:
    from cmaam.testing.tiny import build_tiny_causal_lm, build_tiny_vlm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", nargs="?", type=Path, help="folder for the tiny models (default: a new temporary one)")
    arguments = parser.parse_args()
    work = arguments.work or Path(tempfile.mkdtemp(prefix="cmaam-cross-model-"))
    work.mkdir(parents=True, exist_ok=True)
    qwen2 = build_tiny_causal_lm(work / "qwen2", "qwen2", seed=5)
    qwen2vl = build_tiny_vlm(work / "qwen2vl", "qwen2_vl", seed=0)
    onevision = build_tiny_vlm(work / "onevision", "llava_onevision", seed=6)
    llama = build_tiny_causal_lm(work / "llama", "llama", seed=0)
    text_into_vlm(work, qwen2, qwen2vl, "tiny Qwen2 text model -> tiny Qwen2-VL")
    text_into_vlm(work, qwen2, build_tiny_vlm(work / "qwen2_5_vl", "qwen2_5_vl", seed=12),
                  "tiny Qwen2 text model -> tiny Qwen2.5-VL")
    text_into_vlm(work, llama, build_tiny_vlm(work / "llava", "llava", seed=12), "tiny Llama -> tiny LLaVA-1.5")
    tokenizer_mismatch(work, qwen2, qwen2vl)
    onevision_onto_qwen2vl(work, onevision, qwen2vl)
    adapters(work, llama, qwen2vl)
    extraction(work, llama)
    print(f"\n(models under {work})")


if __name__ == "__main__":
    main()
