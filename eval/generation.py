"""Generation backends behind one interface: batched greedy decoding with chat templates (HF, or vLLM on a GPU).

``load_generator(path)`` picks vLLM when it is installed and a GPU is present, else Hugging Face
transformers; both take ``GenerationRequest`` lists and return completions in the same order.
torch and transformers are imported when a model is loaded, so bad inputs fail fast.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import importlib.util
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from tqdm.auto import tqdm

from cmaam.core.errors import CMAAMError
from eval.loading import check_weight_files, load_errors, load_pretrained_strict

logger = logging.getLogger(__name__)
BACKENDS = ("auto", "hf", "vllm")


@dataclass
class GenerationRequest:
    """One prompt: the user text, an optional image (path or PIL image), system prompt and earlier turns.

    ``history`` holds earlier chat turns (few-shot exemplars) placed before the user text.
    """

    text: str
    image: Any = None
    system: str | None = None
    history: list[dict] | None = None


def load_image(image: Any):
    """A decoded PIL RGB image from a path or a PIL image (a one-line error when the file is missing or unreadable)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    if not path.is_file():
        raise CMAAMError(f"{path}: image not found")
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        message = str(error).replace(f"'{path}'", "").replace(str(path), "").strip(" :")
        raise CMAAMError(f"{path}: not a readable image ({type(error).__name__}: {message})") from None


def _parts(content: Any) -> list[dict]:
    return content if isinstance(content, list) else [{"type": "text", "text": content}]


def chat_messages(request: GenerationRequest, vision: bool, image_part: dict | None = None) -> list[dict]:
    """The chat messages of a request; for VLMs every content is a list of parts and the image leads the last turn."""
    messages = [{"role": "system", "content": request.system}] if request.system else []
    messages += [dict(message) for message in request.history or []]
    messages.append({"role": "user", "content": request.text})
    if not vision:
        return messages
    for message in messages:
        message["content"] = _parts(message["content"])
    if request.image is not None:
        messages[-1]["content"] = [image_part or {"type": "image"}] + messages[-1]["content"]
    return messages


def _plain_prompt(messages: list[dict]) -> str:
    """A prompt for tokenizers without a chat template: the turns' texts separated by blank lines."""
    texts = []
    for message in messages:
        content = message["content"]
        texts.append(content if isinstance(content, str) else " ".join(p.get("text", "") for p in content))
    return "\n\n".join(texts) + "\n\n"


@contextlib.contextmanager
def _left_padding(tokenizer) -> Iterator[None]:
    """Pad on the left (and with EOS when there is no pad token) for the block, then restore the tokenizer."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = pad


def _batches(items: Sequence[int], size: int) -> Iterator[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def is_vision_config(config: dict) -> bool:
    """True when a config.json describes a vision-language model."""
    return "vision_config" in config or "vision_tower" in config or "mm_vision_tower" in config


def check_model_folder(path: str | Path, allow_pickle: bool = False, adapter_base: str | Path | None = None) -> dict:
    """The config.json of a model folder whose weight files are readable (pickles only with ``allow_pickle``).

    A peft LoRA adapter folder gives its base's config once the adapter is checked against the base (names and
    shapes). Reads no tensor data, so bad inputs fail before a model is built.
    """
    from cmaam.io import load_config
    from cmaam.io.adapters import is_adapter_folder, open_model

    path = Path(path)
    if not path.is_dir():
        raise CMAAMError(f"{path}: model folder not found")
    if is_adapter_folder(path):
        with open_model(path, allow_pickle, adapter_base) as reader:
            path = reader.reference_folder
    config = load_config(path)
    check_weight_files(path, allow_pickle)
    return config


def _check_text_only(requests: Sequence[GenerationRequest], vision: bool) -> None:
    """A text-only model must not be given images silently: the caller drops them explicitly (--text-only)."""
    if not vision and any(request.image is not None for request in requests):
        raise CMAAMError("a text-only model was given a request with an image; drop the images explicitly "
                         "(python -m eval.vqa --text-only) or use a vision-language model")


class HFGenerator:
    """Batched greedy generation with transformers: causal LMs with their tokenizer, VLMs with their processor."""

    def __init__(self, model_path: str | Path, device: str = "auto", dtype: Any = None,
                 batch_size: int = 8, max_new_tokens: int = 64, trust_remote_code: bool = False,
                 allow_pickle: bool = False, progress: bool = True, adapter_base: str | Path | None = None):
        import torch

        from cmaam.io import parse_dtype
        from cmaam.io.adapters import apply_adapter, is_adapter_folder, open_model
        from cmaam.merging.executor import resolve_device

        adapter = Path(model_path) if is_adapter_folder(model_path) else None
        config = check_model_folder(model_path, allow_pickle, adapter_base)
        reader = open_model(adapter, allow_pickle, adapter_base) if adapter is not None else None
        path = reader.reference_folder if reader is not None else Path(model_path)
        device = resolve_device(device)
        torch_dtype: Any = parse_dtype(dtype) if dtype not in (None, "auto") else None
        if torch_dtype is None:
            torch_dtype = "auto" if device.startswith("cuda") or dtype == "auto" else torch.float32
        vision = is_vision_config(config)
        with load_errors(path, "the tokenizer or processor"):
            if vision:
                from transformers import AutoModelForImageTextToText as model_class

                from cmaam.io.processors import load_processor

                tokenizer_or_processor = load_processor(path, trust_remote_code=trust_remote_code)
                if tokenizer_or_processor is None:
                    raise CMAAMError(f"{path}: vision-language model without a processor "
                                     "(preprocessor_config.json missing)")
            else:
                from transformers import AutoModelForCausalLM as model_class
                from transformers import AutoTokenizer

                tokenizer_or_processor = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = load_pretrained_strict(model_class, path, progress=progress, dtype=torch_dtype, device_map=device,
                                       trust_remote_code=trust_remote_code,
                                       use_safetensors=None if allow_pickle else True)
        if reader is not None:  # the adapted weights, W + scale * B @ A, as every merge reads them
            with reader:
                apply_adapter(model, reader)
        self._setup(model, tokenizer_or_processor, batch_size, max_new_tokens, progress)
        self.model_path = adapter or path

    @classmethod
    def from_model(cls, model, tokenizer_or_processor, batch_size: int = 8, max_new_tokens: int = 64,
                   progress: bool = True) -> "HFGenerator":
        """Wrap an in-memory model (the CMA-ES merger's candidate, the fine-tuner's model) without reloading it."""
        generator = cls.__new__(cls)
        generator._setup(model, tokenizer_or_processor, batch_size, max_new_tokens, progress)
        generator.model_path = None
        return generator

    def _setup(self, model, tokenizer_or_processor, batch_size: int, max_new_tokens: int, progress: bool) -> None:
        if batch_size < 1 or max_new_tokens < 1:
            raise CMAAMError(f"batch size and max new tokens must be positive, got {batch_size} and {max_new_tokens}")
        self.model = model
        self.vision = hasattr(tokenizer_or_processor, "image_processor")
        self.processor = tokenizer_or_processor if self.vision else None
        self.tokenizer = tokenizer_or_processor.tokenizer if self.vision else tokenizer_or_processor
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.progress = progress
        self._warned_no_template = False

    def render(self, request: GenerationRequest) -> str:
        """The prompt text the model sees for a request (chat template applied, generation prompt added)."""
        messages = chat_messages(request, self.vision)
        templater = self.processor if self.vision and getattr(self.processor, "chat_template", None) else self.tokenizer
        if getattr(templater, "chat_template", None) is None:
            if not self._warned_no_template:
                logger.warning("the tokenizer has no chat template; prompts are plain text separated by blank lines")
                self._warned_no_template = True
            return _plain_prompt(messages)
        try:
            return templater.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as error:  # jinja raises its own exception types (e.g. TemplateError)
            raise CMAAMError(f"the chat template rejected the prompt ({error})") from None

    def encode(self, requests: Sequence[GenerationRequest]):
        """The model inputs (left-padded batch encoding) of ``requests``, as ``generate`` builds them."""
        requests = list(requests)
        _check_text_only(requests, self.vision)
        return self._encode([self.render(request) for request in requests], requests)

    def _encode(self, prompts: list[str], requests: list[GenerationRequest]):
        has_template = getattr(self.processor or self.tokenizer, "chat_template", None) is not None
        with _left_padding(self.tokenizer):
            if self.vision:
                images = [load_image(r.image) for r in requests if r.image is not None]
                return self.processor(text=prompts, images=images or None, padding=True, return_tensors="pt")
            return self.tokenizer(prompts, padding=True, return_tensors="pt", add_special_tokens=not has_template)

    def _generation_config(self):
        config = copy.deepcopy(self.model.generation_config)
        config.do_sample, config.num_beams = False, 1
        config.temperature = config.top_p = config.top_k = None
        config.max_new_tokens = self.max_new_tokens
        config.pad_token_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        if config.eos_token_id is None:
            config.eos_token_id = self.tokenizer.eos_token_id
        return config

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Greedy completions for ``requests`` in order; batches are formed longest prompt first."""
        import torch

        requests = list(requests)
        _check_text_only(requests, self.vision)
        prompts = [self.render(request) for request in requests]
        order = sorted(range(len(requests)), key=lambda i: (-len(prompts[i]), i))
        completions: list[str] = [""] * len(requests)
        config = self._generation_config()
        was_training = self.model.training
        self.model.eval()
        try:
            bar = tqdm(total=len(requests), desc="generating", unit="prompt", disable=not self.progress)
            with bar, torch.inference_mode():
                for batch in _batches(order, self.batch_size):
                    inputs = self._encode([prompts[i] for i in batch], [requests[i] for i in batch])
                    inputs = inputs.to(self.model.device)
                    output = self.model.generate(**inputs, generation_config=config)
                    new_tokens = output[:, inputs["input_ids"].shape[1]:]
                    texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                    for index, text in zip(batch, texts):
                        completions[index] = text.strip()
                    bar.update(len(batch))
        finally:
            self.model.train(was_training)
        return completions


class VLLMGenerator:
    """Greedy generation with vLLM (GPU only); images are passed as data URLs in the chat messages."""

    def __init__(self, model_path: str | Path, device: str = "auto", dtype: str | None = None, batch_size: int = 8,
                 max_new_tokens: int = 64, trust_remote_code: bool = False, allow_pickle: bool = False,
                 progress: bool = True, adapter_base: str | Path | None = None, **engine_options: Any):
        path = Path(model_path)  # adapter folders are refused by load_generator (adapter_base is unused)
        config = check_model_folder(path, allow_pickle)
        from vllm import LLM

        self.vision = is_vision_config(config)
        self.max_new_tokens = max_new_tokens
        self.progress = progress
        self.model_path = path
        with load_errors(path):
            self.llm = LLM(model=str(path), dtype=str(dtype or "auto"), trust_remote_code=trust_remote_code,
                           seed=0, max_num_seqs=max(batch_size, 1), **engine_options)

    def _messages(self, request: GenerationRequest) -> list[dict]:
        part = None
        if self.vision and request.image is not None:
            buffer = io.BytesIO()
            load_image(request.image).save(buffer, format="PNG")
            url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
            part = {"type": "image_url", "image_url": {"url": url}}
        return chat_messages(request, self.vision, part)

    def render(self, request: GenerationRequest) -> str:
        """The prompt text (the tokenizer's chat template) for a request, without the image data."""
        messages = chat_messages(request, self.vision)
        return self.llm.get_tokenizer().apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Greedy completions for ``requests`` in order (vLLM schedules the batches)."""
        from vllm import SamplingParams

        _check_text_only(requests, self.vision)
        params = SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens)
        outputs = self.llm.chat([self._messages(r) for r in requests], params, use_tqdm=self.progress)
        return [output.outputs[0].text.strip() for output in outputs]


def vllm_available() -> bool:
    """True when vLLM is importable and a CUDA GPU is present (vLLM is never imported to find out)."""
    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def load_generator(model_path: str | Path, backend: str = "auto", **options: Any):
    """A generator for a model (or peft LoRA adapter) folder: 'hf', 'vllm', or 'auto' (vLLM when installed with a
    GPU, else HF; adapters always HF)."""
    if backend not in BACKENDS:
        raise CMAAMError(f"unknown generation backend {backend!r} (choose {', '.join(BACKENDS)})")
    if backend == "vllm" and not vllm_available():
        raise CMAAMError("backend 'vllm' needs the vllm package and a CUDA GPU; use --backend hf")
    from cmaam.io.adapters import is_adapter_folder

    if backend == "vllm" and is_adapter_folder(model_path):
        raise CMAAMError(f"{model_path}: a peft adapter folder; the vllm backend needs a merged model "
                         "(use --backend hf)")
    if backend == "vllm" or (backend == "auto" and vllm_available() and not is_adapter_folder(model_path)):
        return VLLMGenerator(model_path, **options)
    return HFGenerator(model_path, **options)


def rendered_prompts(generator: Any, requests: Sequence[GenerationRequest]) -> list[str]:
    """The prompts a generator will see (its ``render``), or the request texts for generators without one."""
    render = getattr(generator, "render", None)
    return [render(r) for r in requests] if callable(render) else [r.text for r in requests]


@contextlib.contextmanager
def max_new_tokens_set(generator: Any, max_new_tokens: int | None) -> Iterator[Any]:
    """Temporarily set a generator's ``max_new_tokens`` (generators without the attribute are left alone)."""
    if max_new_tokens is None or not hasattr(generator, "max_new_tokens"):
        yield generator
        return
    previous = generator.max_new_tokens
    generator.max_new_tokens = max_new_tokens
    try:
        yield generator
    finally:
        generator.max_new_tokens = previous
