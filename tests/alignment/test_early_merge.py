"""Merging in the analysis pass the units whose alphas are already known: the same bytes, fewer reads."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from cmaam.alignment.alphas.plan import AlphaConfig
from cmaam.alignment.early_merge import plan_units
from cmaam.alignment.merge import merge_vlm
from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader
from cmaam.merging import executor
from cmaam.testing.reads import record_reads

NOTHING_HELD = "2KB"  # half of it (the hold budget) is smaller than any unit of the tiny pair
EVERYTHING_HELD = "1GB"


def weights(folder: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in sorted(Path(folder).glob("*.safetensors"))}


@pytest.fixture
def reads(monkeypatch):
    """Reads per (folder name, tensor name): whole tensors and first row blocks."""
    counts: Counter = Counter()
    record_reads(monkeypatch, lambda folder, name, start, *rest: start == 0 and counts.update([(folder, name)]))
    return counts


def test_units_are_held_while_their_spans_fit_the_budget():
    order = ["a1", "a2", "b1", "c1", "b2"]
    sizes = dict.fromkeys(order, 10)
    unit = {"a1": "a", "a2": "a", "b1": "b", "b2": "b", "c1": "c"}.get
    assert plan_units(order, unit, sizes, 30) == {"a", "b", "c"}  # c (10) shares position 3 with b (20)
    assert plan_units(order, unit, sizes, 25) == {"a", "b"}
    assert plan_units(order, unit, sizes, 19) == {"c"}
    assert plan_units(order, unit, sizes, 9) == set()


@pytest.mark.parametrize("strategy, preserve_mean", [("basic", False), ("layerwise", False), ("full", False),
                                                     ("component", True)])
@pytest.mark.parametrize("chunk", [None, 256])
def test_early_merges_equal_the_merge_pass_byte_for_byte(tiny_qwen2vl_pair, tmp_path, monkeypatch, reads,
                                                         strategy, preserve_mean, chunk):
    if chunk:
        monkeypatch.setattr(executor, "COMPUTE_CHUNK_ELEMENTS", chunk)
    target, source = tiny_qwen2vl_pair
    config = AlphaConfig(strategy=strategy, preserve_mean=preserve_mean)
    results = {}
    for budget in (NOTHING_HELD, EVERYTHING_HELD):
        reads.clear()
        merge_vlm(source, target, tmp_path / budget, config, ExecutionOptions(max_memory=budget, progress=False),
                  print_summary=False)
        results[budget] = dict(reads)
    assert weights(tmp_path / NOTHING_HELD) == weights(tmp_path / EVERYTHING_HELD)
    assert (tmp_path / NOTHING_HELD / "alphas.yaml").read_bytes() == \
        (tmp_path / EVERYTHING_HELD / "alphas.yaml").read_bytes()
    source_name = Path(source).name
    scored = [name for name in CheckpointReader(source).keys()]
    # nothing held: the merge pass reads every target tensor again; everything held: no tensor is read twice
    assert all(results[NOTHING_HELD][(source_name, name)] == 2 for name in scored)
    assert all(count == 1 for count in results[EVERYTHING_HELD].values())
