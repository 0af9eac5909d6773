"""A decoder-only causal LM whose decoder layer t scales its input: ``h_t = layer_t(s_t * h_(t-1))``.

This file is copied (with ``BASE_MODEL_TYPE`` set) into a data-flow merge whose input scales cannot be
folded into the weights exactly. Its weights are an ordinary passthrough frankenmerge of the base
family (the same tensor names); ``config.json`` adds ``input_scales``. Load it with
``AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)``; without trust_remote_code
transformers refuses the unknown ``model_type`` instead of silently dropping the scales.
It imports only transformers, so it runs without cmaam installed.
"""

from __future__ import annotations

import transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

BASE_MODEL_TYPE = "llama"  # rewritten when the file is copied beside a model
MODEL_TYPE = "cmaam_dataflow"


def scale_first_input(module, args, kwargs):
    """Forward pre-hook: multiply the layer's hidden states (first positional or ``hidden_states``) by its scale."""
    scale = module.cmaam_input_scale
    if scale == 1.0:
        return None
    if args:
        return (args[0] * scale, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": kwargs["hidden_states"] * scale}


def install_input_scales(layers, scales) -> None:
    """Give decoder layer t the input scale ``scales[t]`` (a forward pre-hook; no parameters are added)."""
    scales = [float(scale) for scale in scales]
    if len(scales) != len(layers):
        raise ValueError(f"input_scales has {len(scales)} values for {len(layers)} decoder layers")
    for layer, scale in zip(layers, scales):
        layer.cmaam_input_scale = scale
        if not getattr(layer, "cmaam_input_hook", None):
            layer.cmaam_input_hook = layer.register_forward_pre_hook(scale_first_input, with_kwargs=True)


_BaseConfig = CONFIG_MAPPING[BASE_MODEL_TYPE]
_BaseModel = getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[BASE_MODEL_TYPE])


class DataFlowConfig(_BaseConfig):
    """The base family's config plus ``input_scales`` (one per decoder layer)."""

    model_type = MODEL_TYPE


class DataFlowForCausalLM(_BaseModel):
    """The base family's causal LM with one input scale per decoder layer (``config.input_scales``)."""

    config_class = DataFlowConfig

    def __init__(self, config):
        super().__init__(config)
        scales = getattr(config, "input_scales", None)
        install_input_scales(self.model.layers, scales if scales is not None else [1.0] * len(self.model.layers))
