"""HF generation backend on tiny random models: batching, ordering, chat templates, in-memory models, errors."""

import json
import shutil

import pytest

from cmaam.core.errors import CMAAMError
from eval.generation import GenerationRequest, HFGenerator, load_generator, vllm_available

REQUESTS = [GenerationRequest("Hello"), GenerationRequest("정답은 무엇입니까? 조금 더 긴 질문입니다."),
            GenerationRequest("2 + 2 = ?", system="Answer briefly."),
            GenerationRequest("Q3", history=[{"role": "user", "content": "Q1"},
                                             {"role": "assistant", "content": "A1"}])]


@pytest.fixture(scope="module")
def llama_generator(tiny_llama):
    return HFGenerator(tiny_llama, max_new_tokens=5, batch_size=4, progress=False)


def test_batched_generation_matches_one_by_one(llama_generator):
    batched = llama_generator.generate(REQUESTS)
    llama_generator.batch_size = 1
    try:
        single = llama_generator.generate(REQUESTS)
    finally:
        llama_generator.batch_size = 4
    assert batched == single and len(batched) == 4
    assert llama_generator.generate(REQUESTS[::-1]) == batched[::-1]
    assert len(set(batched)) > 1


def test_render_applies_the_chat_template(llama_generator):
    prompt = llama_generator.render(REQUESTS[3])
    assert prompt == ("<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
                      "<|im_start|>user\nQ3<|im_end|>\n<|im_start|>assistant\n")
    assert llama_generator.render(REQUESTS[2]).startswith("<|im_start|>system\nAnswer briefly.<|im_end|>")


def test_max_new_tokens_bounds_the_completion(llama_generator):
    llama_generator.max_new_tokens = 1
    try:
        completions = llama_generator.generate(REQUESTS[:2])
    finally:
        llama_generator.max_new_tokens = 5
    assert all(len(text.encode("utf-8", "replace")) <= 3 for text in completions)


def test_from_model_restores_caller_state(tiny_llama, llama_generator):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.train()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.padding_side = "right"
    generator = HFGenerator.from_model(model, tokenizer, batch_size=2, max_new_tokens=5, progress=False)
    assert generator.generate(REQUESTS) == llama_generator.generate(REQUESTS)
    assert model.training and tokenizer.padding_side == "right"


def test_plain_prompt_without_chat_template(tiny_llama, tmp_path):
    folder = tmp_path / "no_template"
    shutil.copytree(tiny_llama, folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    generator = HFGenerator(folder, max_new_tokens=2, progress=False)
    assert generator.render(REQUESTS[3]) == "Q1\n\nA1\n\nQ3\n\n"
    assert len(generator.generate(REQUESTS[:2])) == 2


def test_vlm_generation_with_and_without_images(tiny_qwen2vl, vqa_folder):
    generator = HFGenerator(tiny_qwen2vl, max_new_tokens=3, batch_size=2, progress=False)
    images = vqa_folder.parent / "images"
    requests = [GenerationRequest("What color?", image=images / "red.png"), GenerationRequest("No image"),
                GenerationRequest("What color?", image=str(images / "blue.png"))]
    assert "<|vision_start|><|image_pad|><|vision_end|>What color?" in generator.render(requests[0])
    completions = generator.generate(requests)
    assert len(completions) == 3 and completions == generator.generate(requests)
    with pytest.raises(CMAAMError, match="image not found"):
        generator.generate([GenerationRequest("?", image=images / "missing.png")])


def test_load_errors(tmp_path, tiny_llama):
    with pytest.raises(CMAAMError, match="model folder not found"):
        load_generator(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CMAAMError, match="no config.json"):
        load_generator(tmp_path / "empty")
    folder = tmp_path / "config_only"
    folder.mkdir()
    shutil.copy(tiny_llama / "config.json", folder / "config.json")
    with pytest.raises(CMAAMError, match="no weights found"):
        load_generator(folder, backend="hf")
    (folder / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(CMAAMError, match="pytorch_model.bin.*--allow-pickle"):
        load_generator(folder, backend="hf")
    with pytest.raises(CMAAMError, match="unknown generation backend 'tgi'"):
        load_generator(tiny_llama, backend="tgi")
    if not vllm_available():
        with pytest.raises(CMAAMError, match="needs the vllm package and a CUDA GPU"):
            load_generator(tiny_llama, backend="vllm")
