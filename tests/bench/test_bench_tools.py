"""The benchmarks' own pieces: the real-scale pair builder, its disk check, the I/O floor and the measuring wrapper."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import benchtools  # noqa: E402
import real_scale  # noqa: E402

from cmaam.io import CheckpointReader  # noqa: E402


def test_the_pair_has_the_real_layout_and_a_fine_tune_like_source(tmp_path):
    shape = real_scale.SHAPES["tiny"]
    target, source = real_scale.build_pair(tmp_path / "pair", shape)
    target_reader, source_reader = CheckpointReader(target), CheckpointReader(source)
    assert sorted(target_reader.keys()) == [name for name, _ in shape.tensors()]
    assert folder_size(target) == pytest.approx(shape.nbytes(), rel=0.01)
    changed = {name for name in target_reader.keys()
               if not torch.equal(target_reader.get(name), source_reader.get(name))}
    language = {name for name in target_reader.keys()
                if name.startswith("model.layers.") and name.endswith("proj.weight")}
    assert changed == language | {"lm_head.weight", "model.embed_tokens.weight"}  # vision and norms unchanged
    name = "model.layers.0.mlp.up_proj.weight"
    weight = target_reader.get(name).float()
    change = float((source_reader.get(name).float() - weight).norm() / weight.norm())
    assert 0 < change < 5 * real_scale.DELTA  # a small change, as a fine-tune makes
    assert real_scale.build_pair(tmp_path / "pair", shape) == (target, source)  # a kept pair is reused


def folder_size(folder: Path) -> int:
    return benchtools.folder_bytes(folder)


def test_too_little_disk_is_refused_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(real_scale, "free_bytes", lambda folder: 10 * 10**9)
    with pytest.raises(SystemExit) as exit_code:
        real_scale.check_disk(tmp_path, "qwen2_vl_7b", 3)
    assert exit_code.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: qwen2_vl_7b needs about 52 GB free") and error.count("\n") == 1
    real_scale.check_disk(tmp_path, "tiny", 3)  # a few MB: fine


def test_measure_reports_the_child_and_the_floor_writes_what_it_reads(tmp_path):
    data = tmp_path / "input.bin"
    data.write_bytes(b"x" * 3_000_000)
    floor = benchtools.io_floor([data], 2_000_000, tmp_path)
    assert floor["seconds"] > 0 and floor["rchar"] >= 3_000_000 and floor["wchar"] >= 2_000_000
    assert not (tmp_path / "io_floor.bin").exists()
    result = benchtools.measure([sys.executable, "-c", "x = bytearray(200 * 2**20)"])
    assert result["peak_rss_mb"] > 200
