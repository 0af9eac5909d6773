"""Load and save a model folder's processor, also where the video processor cannot be built (no torchvision)."""

from __future__ import annotations

import json
from pathlib import Path

from cmaam.core.errors import CMAAMError, first_line, load_errors


def _image_only_qwen2vl_class():
    from transformers import Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
        """Qwen2-VL processor without the video processor (which needs torchvision)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return Qwen2VLImageOnlyProcessor


def build_qwen2vl_processor(image_processor, tokenizer, chat_template: str | None = None):
    """A Qwen2-VL processor from parts, image-only when the video processor is unavailable."""
    from transformers import Qwen2VLProcessor

    try:
        from transformers import Qwen2VLVideoProcessor

        return Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                video_processor=Qwen2VLVideoProcessor(), chat_template=chat_template)
    except ImportError:
        return _image_only_qwen2vl_class()(image_processor=image_processor, tokenizer=tokenizer,
                                           chat_template=chat_template)


def load_processor(path: str | Path, trust_remote_code: bool = False):
    """AutoProcessor for a model folder; for Qwen2-VL without torchvision, an image-only processor.

    Returns None for text-only models (use the tokenizer). Raises CMAAMError with one line otherwise.
    """
    from transformers import AutoProcessor, AutoTokenizer

    path = Path(path)
    if not (path / "preprocessor_config.json").exists() and not (path / "processor_config.json").exists():
        return None
    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as error:  # noqa: BLE001 - any loader failure: try the image-only route, else one line
        first_error = first_line(error)
    from cmaam.io import load_config

    model_type = load_config(path).get("model_type", "")
    if model_type not in ("qwen2_vl", "qwen2_5_vl"):
        raise CMAAMError(f"{path}: cannot load the processor ({first_error})")
    from transformers import AutoImageProcessor

    with load_errors(path, "processor"):
        image_processor = AutoImageProcessor.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    template_file = path / "chat_template.jinja"
    template = template_file.read_text(encoding="utf-8") if template_file.exists() else tokenizer.chat_template
    return build_qwen2vl_processor(image_processor, tokenizer, template)


def save_processor(processor, output: str | Path) -> None:
    """Save a processor under its standard class name (image-only Qwen2-VL saves as Qwen2VLProcessor)."""
    processor.save_pretrained(output)
    for name in ("processor_config.json", "preprocessor_config.json"):
        path = Path(output) / name
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("processor_class") == "Qwen2VLImageOnlyProcessor":
                data["processor_class"] = "Qwen2VLProcessor"
                path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
