"""Shared fixtures: tiny random models built from transformers configs (no downloads)."""

from __future__ import annotations

import os
import signal

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# A shell without job control starts background jobs with SIGINT ignored, and children inherit that; the
# Ctrl-C tests send SIGINT to child commands, so give the children the default disposition a terminal has.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def tiny_model_fixtures(name: str, builder: str, model_type: str, title: str):
    """Session fixtures ``tiny_NAME`` (``cmaam.testing.tiny.BUILDER``, seed 0) and ``tiny_NAME_pair``
    (the model, a seeded perturbation of it standing in for a fine-tune): one definition for every tiny model."""

    def model(tmp_path_factory):
        from cmaam.testing import tiny

        return getattr(tiny, builder)(tmp_path_factory.mktemp("models") / name, model_type, seed=0)

    def pair(request, tmp_path_factory):
        from cmaam.testing.tiny import perturb_model

        base = request.getfixturevalue(f"tiny_{name}")
        return base, perturb_model(base, tmp_path_factory.mktemp("models") / f"{name}_ft", 0.05, seed=1)

    model.__doc__ = f"A tiny random {title} saved to disk (seed 0)."
    pair.__doc__ = f"(base, fine-tuned stand-in): the tiny {title} and a seeded perturbation of it (seed 1)."
    return (pytest.fixture(model, scope="session", name=f"tiny_{name}"),
            pytest.fixture(pair, scope="session", name=f"tiny_{name}_pair"))


tiny_llama, tiny_llama_pair = tiny_model_fixtures("llama", "build_tiny_causal_lm", "llama", "Llama")
tiny_qwen2vl, tiny_qwen2vl_pair = tiny_model_fixtures("qwen2vl", "build_tiny_vlm", "qwen2_vl",
                                                      "Qwen2-VL (transformers-5 names) with its processor")


@pytest.fixture
def cli_error(capfd):
    """Run a CLI main expecting a user error: exit code 2, stderr exactly one 'error: ...' line and no traceback.

    Returns the error line. stderr is captured at the file-descriptor level, so library output counts too.
    """
    from cmaam.core.cli import run_cli

    def run(main, argv):
        capfd.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main, argv)
        err = capfd.readouterr().err
        assert exit_info.value.code == 2, err
        assert "Traceback" not in err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        return lines[0]

    return run


# -- peft adapters, a tiny Qwen2 text model and a tiny LLaVA-OneVision (cross-model merging) --------------------
LLAMA_TARGETS = ["q_proj", "v_proj", "down_proj", "embed_tokens"]
QWEN2VL_TARGETS = r".*(q_proj|v_proj|fc1|patch_embed\.proj|embed_tokens)"


@pytest.fixture(scope="session")
def llama_adapter(tiny_llama, tmp_path_factory):
    """A LoRA adapter of the tiny Llama: attention, MLP and embedding LoRA, lm_head in modules_to_save."""
    from cmaam.testing.tiny import build_tiny_adapter

    return build_tiny_adapter(tiny_llama, tmp_path_factory.mktemp("adapters") / "llama_lora", LLAMA_TARGETS,
                              seed=3, modules_to_save=["lm_head"])


@pytest.fixture(scope="session")
def qwen2vl_adapter(tiny_qwen2vl, tmp_path_factory):
    """A LoRA adapter of the tiny Qwen2-VL: language and vision linears, the Conv3d patch embedding, embeddings."""
    from cmaam.testing.tiny import build_tiny_adapter

    return build_tiny_adapter(tiny_qwen2vl, tmp_path_factory.mktemp("adapters") / "qwen2vl_lora", QWEN2VL_TARGETS,
                              seed=4, modules_to_save=["lm_head"], use_rslora=True, r=8, lora_alpha=4,
                              rank_pattern={"v_proj": 2}, alpha_pattern={"fc1": 16})


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    """A tiny Qwen2 text model with the tiny Qwen2-VL's language-model sizes and tokenizer (seed 5)."""
    from cmaam.testing.tiny import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("models") / "qwen2", "qwen2", seed=5)


@pytest.fixture(scope="session")
def tiny_onevision(tmp_path_factory):
    """A tiny LLaVA-OneVision (SigLIP tower, Qwen2 language model) with the tiny Qwen2-VL's LM sizes."""
    from cmaam.testing.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("models") / "onevision", "llava_onevision", seed=6)


def _peft_merged_state(base, adapter):
    """peft's reference: the base loaded with transformers, the adapter applied and merged (merge_and_unload)."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(base)
    model_class = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    model = PeftModel.from_pretrained(model_class.from_pretrained(base, dtype=torch.float32), adapter)
    return model.merge_and_unload().state_dict()


@pytest.fixture(scope="session")
def peft_merged():
    """``peft_merged(base, adapter)``: the state dict of peft's merge_and_unload (runtime parameter names)."""
    return _peft_merged_state



@pytest.fixture
def read_log(monkeypatch):
    """Every read of tensor data from a CheckpointReader, in call order: (folder name, tensor name, start, stop,
    rows)."""
    from cmaam.testing.reads import record_reads

    return record_reads(monkeypatch)
