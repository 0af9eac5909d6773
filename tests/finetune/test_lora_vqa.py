"""LoRA / full fine-tuning on a tiny Qwen2-VL: loss falls, outputs load, only targeted weights change, resume."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cmaam.core.cli import run_cli
from cmaam.core.errors import CMAAMError
from eval.vqa.metrics import exact_match
from finetune.lora_vqa import LoraTrainConfig, lora_targets, main, train

FAST = dict(batch_size=8, grad_accum=1, lr=5e-3, lora_rank=8, lora_alpha=16, lora_dropout=0.0, warmup=0,
            logging_steps=1, save_steps=100, eval_limit=8, eval_batch_size=8, max_new_tokens=8, threads=1,
            wandb_mode="disabled", progress=False)


def _config(model, data, output: Path, **overrides) -> LoraTrainConfig:
    options = {**FAST, "max_steps": 8, "results_root": str(output.parent / "results"), **overrides}
    return LoraTrainConfig(model=str(model), data=str(data), output=str(output), **options)


def _state_dict(path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path).state_dict()


@pytest.fixture(scope="module")
def lora_run(tiny_qwen2vl, synthetic_en, tmp_path_factory):
    output = tmp_path_factory.mktemp("lora") / "finetuned"
    return _config(tiny_qwen2vl, synthetic_en, output), train(_config(tiny_qwen2vl, synthetic_en, output))


def test_lora_loss_falls_and_outputs_are_complete(lora_run):
    config, result = lora_run
    losses = [row["loss"] for row in result.loss_history]
    assert [row["step"] for row in result.loss_history] == list(range(1, 9))
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.3, losses
    output = Path(config.output)
    assert (output / "adapter" / "adapter_config.json").is_file()
    assert (output / "adapter" / "adapter_model.safetensors").is_file()
    assert not (output / "checkpoints").exists()  # removed after success unless --keep-checkpoints
    saved = json.loads((output / "train_result.json").read_text())
    assert saved["global_step"] == 8 and saved["merged"] == str(output / "merged")
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["train/global_step"] == 8 and metrics["test/count"] == 8
    samples = [json.loads(line) for line in (result.run_dir / "test_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8
    # the reported accuracy is the samples' completions re-scored against their gold answers
    rescored = [exact_match(sample["completion"], sample["gold"], sample["lang"]) for sample in samples]
    assert metrics["test/exact_match"] == pytest.approx(sum(rescored) / 8)
    assert (result.run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_merged_model_loads_and_differs_only_in_targeted_modules(lora_run, tiny_qwen2vl):
    from cmaam.io.processors import load_processor

    config, result = lora_run
    merged = Path(config.output) / "merged"
    processor = load_processor(merged)
    assert type(processor).__name__ in ("Qwen2VLProcessor", "Qwen2VLImageOnlyProcessor")
    # saved under the standard class name, so AutoProcessor elsewhere finds it (save_processor)
    saved = [json.loads((merged / name).read_text()).get("processor_class")
             for name in ("processor_config.json", "preprocessor_config.json") if (merged / name).exists()]
    assert "Qwen2VLProcessor" in saved and "Qwen2VLImageOnlyProcessor" not in saved
    assert processor.tokenizer("red").input_ids == load_processor(tiny_qwen2vl).tokenizer("red").input_ids
    assert json.loads((merged / "config.json").read_text())["model_type"] == "qwen2_vl"
    base, tuned = _state_dict(tiny_qwen2vl), _state_dict(merged)
    assert base.keys() == tuned.keys()
    targeted = {f"{name}.weight" for name in result.target_modules}
    assert len(targeted) == 14  # q, k, v, o, gate, up, down in each of the 2 language-model layers
    changed = {name for name in base if not torch.equal(base[name], tuned[name])}
    assert changed == targeted


def test_default_and_custom_lora_targets(tiny_qwen2vl):
    from transformers import AutoModelForImageTextToText

    from cmaam.alignment.layouts import get_layout

    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2vl)
    layout = get_layout(config=model.config.to_dict())
    default = lora_targets(model, layout)
    assert len(default) == 14 and all(".language_model." in name for name in default)
    with_vision = lora_targets(model, layout, train_vision=True)
    # + 2 vision blocks x (qkv, proj, fc1, fc2) + the merger's two linear layers
    assert set(default) < set(with_vision) and len(with_vision) == 14 + 8 + 2
    chosen = lora_targets(model, layout, suffixes=["q_proj", "v_proj"])
    assert sorted(name.rsplit(".", 1)[-1] for name in chosen) == ["q_proj", "q_proj", "v_proj", "v_proj"]
    with pytest.raises(CMAAMError, match="match no linear layer"):
        lora_targets(model, layout, suffixes=["qkv"])  # a vision module: not adapted without --train-vision


def test_full_finetune_keeps_the_vision_encoder_frozen(tiny_qwen2vl, synthetic_en, tmp_path):
    result = train(_config(tiny_qwen2vl, synthetic_en, tmp_path / "full", full_finetune=True, max_steps=2,
                           lr=1e-3, eval_limit=0))
    assert result.adapter is None and result.target_modules == []
    base, tuned = _state_dict(tiny_qwen2vl), _state_dict(result.merged)
    changed = {name for name in base if not torch.equal(base[name], tuned[name])}
    vision = {name for name in base if name.startswith("model.visual.") and ".merger." not in name}
    assert vision and not (changed & vision)
    assert {n for n in base if ".language_model." in n or n == "lm_head.weight" or ".merger." in n} <= changed


def test_train_embeddings_also_changes_embeddings_and_head_only(tiny_qwen2vl, synthetic_en, tmp_path):
    result = train(_config(tiny_qwen2vl, synthetic_en, tmp_path / "emb", train_embeddings=True, max_steps=2,
                           target_modules=("q_proj",), eval_limit=0))
    assert result.target_modules[-2:] == ["model.language_model.embed_tokens", "lm_head"]
    base, tuned = _state_dict(tiny_qwen2vl), _state_dict(result.merged)
    changed = {name for name in base if not torch.equal(base[name], tuned[name])}
    assert changed == {f"{name}.weight" for name in result.target_modules} and len(changed) == 4


class _Interrupt:
    """A Trainer callback that stops training like Ctrl-C after ``step`` optimizer steps."""

    def __init__(self, step: int):
        self.step = step

    def __getattr__(self, name):
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_interrupted_training_resumes_from_its_last_checkpoint(lora_run, tiny_qwen2vl, synthetic_en, tmp_path):
    reference_config, reference = lora_run
    config = _config(tiny_qwen2vl, synthetic_en, tmp_path / "resumed", save_steps=4)
    with pytest.raises(KeyboardInterrupt):
        train(config, callbacks=[_Interrupt(5)])
    output = Path(config.output)
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["checkpoint-4"]
    assert not (output / "merged").exists()
    with pytest.raises(CMAAMError, match="pass --resume to continue"):
        train(config)
    result = train(replace(config, resume=True))
    assert result.resumed_from == str(output / "checkpoints" / "checkpoint-4")
    assert result.global_step == 8 and [row["step"] for row in result.loss_history] == list(range(1, 9))
    # the resumed run ends where the uninterrupted one did (same data order, same updates)
    tuned, uninterrupted = _state_dict(result.merged), _state_dict(reference.merged)
    for name in tuned:
        torch.testing.assert_close(tuned[name], uninterrupted[name], rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_one_line_errors(tiny_qwen2vl, synthetic_en, tmp_path, capsys):
    no_processor = tmp_path / "no_processor"
    no_processor.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(tiny_qwen2vl) / name, no_processor / name)
    cases = [
        (["--model", str(no_processor), "--data", str(synthetic_en)], "no processor"),
        (["--model", str(tmp_path / "absent"), "--data", str(synthetic_en)], "model folder not found"),
        (["--model", str(tiny_qwen2vl), "--data", str(tmp_path / "nodata")], "data folder not found"),
        (["--model", str(tiny_qwen2vl), "--data", str(synthetic_en), "--lr", "0"], "--lr must be positive"),
    ]
    for arguments, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main, [*arguments, "--output", str(tmp_path / "out"), "--wandb-mode", "disabled"])
        error = capsys.readouterr().err
        assert exit_info.value.code == 2 and error.startswith("error: ") and message in error, error
        assert error.count("\n") == 1
        assert not (tmp_path / "out").exists()
