"""Reference computations shared by the cross-model tests."""

from __future__ import annotations

import torch


def peft_merged_state(base, adapter):
    """peft's reference: the base loaded with transformers, the adapter applied and merged (merge_and_unload)."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(base)
    model_class = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    model = PeftModel.from_pretrained(model_class.from_pretrained(base, dtype=torch.float32), adapter)
    return model.merge_and_unload().state_dict()
