"""Shared fixtures: tiny random models built from transformers configs (no downloads)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A tiny random Llama saved to disk (seed 0)."""
    from cmaam.testing.tiny import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("models") / "llama", "llama", seed=0)


@pytest.fixture(scope="session")
def tiny_llama_pair(tiny_llama, tmp_path_factory):
    """(base, fine-tuned stand-in): the tiny Llama and a seeded perturbation of it."""
    from cmaam.testing.tiny import perturb_model

    return tiny_llama, perturb_model(tiny_llama, tmp_path_factory.mktemp("models") / "llama_ft", 0.05, seed=1)


@pytest.fixture(scope="session")
def tiny_qwen2vl(tmp_path_factory):
    """A tiny random Qwen2-VL (transformers-5 names) with its processor."""
    from cmaam.testing.tiny import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("models") / "qwen2vl", "qwen2_vl", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen2vl_pair(tiny_qwen2vl, tmp_path_factory):
    """(target, source): the tiny Qwen2-VL and a seeded perturbation standing in for a fine-tune."""
    from cmaam.testing.tiny import perturb_model

    return tiny_qwen2vl, perturb_model(tiny_qwen2vl, tmp_path_factory.mktemp("models") / "qwen2vl_ft", 0.05, seed=1)


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
