"""Shared fixtures: tiny random models built from transformers configs (no downloads)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
