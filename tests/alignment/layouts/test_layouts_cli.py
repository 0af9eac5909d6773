"""``python -m cmaam.layouts``: the classification summary of a model folder, one-line errors."""

from __future__ import annotations

import pytest

from cmaam.core.cli import run_cli
from cmaam.core.errors import CMAAMError
from cmaam.layouts import main


def test_summary_of_a_tiny_vlm(tiny_vlms, capsys):
    assert main([str(tiny_vlms["llava_onevision"]), "--names"]) == 0
    out = capsys.readouterr().out
    assert "layout 'llava_onevision' (LLaVA-OneVision), 80 tensors" in out
    assert "cross_modal_bridge          5          6,336" in out  # 32*64+64 + 64*64+64 + 64 (image_newline)
    assert "shared_embedding            3         34,112" in out  # embed + lm_head 266x64 (byte tokenizer), norm 64
    assert "layerwise groups (7): " in out and "language.1 [12]" in out and "vision.0 [16]" in out
    assert "bridge outputs: multi_modal_projector.linear_2.weight" in out
    assert "image_newline\tcross_modal_bridge\tbridge\t\n" in out


def test_wrong_model_type_is_a_one_line_error(tiny_vlms, capsys):
    with pytest.raises(CMAAMError, match=r"31 parameter name\(s\) match no rule of the 'llava' layout"):
        main([str(tiny_vlms["qwen2_vl"]), "--model-type", "llava"])
    with pytest.raises(SystemExit) as exit_info:  # the entry point: one line on stderr, exit status 2
        run_cli(main, [str(tiny_vlms["qwen2_vl"]), "--model-type", "blip2"])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: unknown model type 'blip2'") and len(stderr.splitlines()) == 1


def test_rules_file_and_full_strategy(tiny_vlms, tmp_path, capsys):
    rules = tmp_path / "merger_as_vision.yaml"
    rules.write_text("extends: qwen2_vl\nrules:\n  - pattern: 'visual\\.merger\\.ln_q\\..+'\n"
                     "    component: vision_encoder\n", encoding="utf-8")
    assert main([str(tiny_vlms["qwen2_vl"]), "--rules-file", str(rules), "--strategy", "full"]) == 0
    out = capsys.readouterr().out
    assert "layout 'merger_as_vision' (user rules), 58 tensors" in out
    assert "vision_encoder             27" in out and "cross_modal_bridge          4" in out  # ln_q weight+bias moved
    assert "full groups (7): " in out and "vision_encoder.1 [12]" in out and "language_model.0 [12]" in out
