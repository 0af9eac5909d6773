"""The memory budget (--max-memory): large tensors read, merged and written in row blocks, same bytes as whole."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions, parse_size
from cmaam.io import CheckpointReader, CheckpointWriter, TensorSpec, write_state_dict
from cmaam.io import reader as reader_module
from cmaam.merging import executor
from cmaam.merging.config_merge import merge_from_config
from cmaam.merging.sweep import sweep
from cmaam.testing.reads import record_reads

SMALL_CHUNK = 64  # elements of one compute chunk in these tests: the tiny models' matrices span many chunks
CONFIG = {"model_type": "llama"}
SMALL_BUDGET = "4KB"  # a row block of all of a job's inputs then holds at most 1000 bytes as float32


def weights(folder: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in sorted(Path(folder).glob("*.safetensors"))}


@pytest.fixture
def reads(monkeypatch):
    """Every read of tensor data as (tensor name, start, stop, rows of the whole tensor)."""
    return record_reads(monkeypatch, lambda folder, *call: call)


def test_parse_size_units_and_errors():
    assert parse_size("1GiB") == 1 << 30 and parse_size("4KB") == 4000 and parse_size("1.5MB") == 1_500_000
    assert parse_size(123) == 123 and parse_size("2e3") == 2000
    for bad in ("lots", "0MB", 0, -5, "1..2GB"):
        with pytest.raises(CMAAMError):
            parse_size(bad)
    with pytest.raises(CMAAMError, match="--max-memory: bad size 'lots'"):
        ExecutionOptions(max_memory="lots").validate()


@pytest.mark.parametrize("positioned", [True, False])
def test_get_rows_reads_exactly_those_rows(tmp_path, monkeypatch, positioned):
    monkeypatch.setattr(reader_module, "POSITIONED_READS", positioned)
    tensors = {"a": torch.randn(10, 3, 2).to(torch.bfloat16), "b": torch.arange(7), "c": torch.tensor(3.0)}
    reader = CheckpointReader(write_state_dict(tmp_path / "m", tensors, config={"model_type": "llama"}))
    assert torch.equal(reader.get_rows("a", 2, 7), tensors["a"][2:7])
    assert torch.equal(reader.get_rows("b", 5), tensors["b"][5:])
    assert torch.equal(reader.get_rows("a"), tensors["a"]) and torch.equal(reader.get_rows("c"), tensors["c"])
    assert reader.get_rows("a", 4, 4).shape == (0, 3, 2)
    with pytest.raises(CMAAMError, match="rows 3:11 out of range"):
        reader.get_rows("a", 3, 11)


@pytest.mark.parametrize("mapped", [True, False])
def test_view_rows_are_those_rows_and_never_write_back(tmp_path, monkeypatch, mapped):
    monkeypatch.setattr(reader_module, "MAPPED_VIEWS", mapped)
    tensors = {"a": torch.randn(1000, 3, 5).to(torch.bfloat16), "b": torch.arange(7), "c": torch.tensor(3.0)}
    folder = write_state_dict(tmp_path / "m", tensors, config={"model_type": "llama"})
    before = weights(folder)
    reader = CheckpointReader(folder)
    assert torch.equal(reader.view_rows("a", 2, 700), tensors["a"][2:700])
    assert torch.equal(reader.view_rows("b", 5), tensors["b"][5:]) and torch.equal(reader.view_rows("c"), tensors["c"])
    view = reader.view_rows("a", 10, 20)
    view.zero_()  # a private copy-on-write page: the file, and later reads of it, keep the stored values
    reader.release_rows("a", 0, 1000)
    assert torch.equal(reader.view_rows("a"), tensors["a"]) and torch.equal(reader.get_rows("a"), tensors["a"])
    assert weights(folder) == before
    with pytest.raises(CMAAMError, match="rows 3:1001 out of range"):
        reader.view_rows("a", 3, 1001)
    reader.close()


def test_a_file_system_that_cannot_map_files_is_read_instead(tmp_path, monkeypatch):
    tensors = {"a": torch.randn(100, 3).to(torch.bfloat16)}
    reader = CheckpointReader(write_state_dict(tmp_path / "m", tensors, config={"model_type": "llama"}))

    def refuse(*args, **kwargs):
        raise OSError(19, "No such device")  # what mmap gives on a file system without mappings

    monkeypatch.setattr(reader_module.mmap, "mmap", refuse)
    assert torch.equal(reader.view_rows("a", 5, 50), tensors["a"][5:50])
    reader.release_rows("a", 5, 50)  # nothing mapped: nothing to release


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_check_finite_finds_any_nan_or_infinity_and_passes_large_finite_values(dtype):
    tensor = torch.randn(3001, 7).to(dtype)
    executor.check_finite(tensor, "t")
    executor.check_finite(tensor[:0], "t")  # empty
    executor.check_finite(torch.full((100_000,), torch.finfo(dtype).max, dtype=dtype), "t")  # sum overflows
    executor.check_finite(torch.arange(10), "t")  # integers: nothing to check
    for value in (float("nan"), float("inf"), -float("inf")):
        for position in ((0, 0), (1500, 3), (3000, 6)):
            bad = tensor.clone()
            bad[position] = value
            with pytest.raises(CMAAMError, match="t: contains NaN or Inf"):
                executor.check_finite(bad, "t")
            with pytest.raises(CMAAMError):
                executor.check_finite(bad.t(), "t")  # not contiguous


def test_rows_written_in_any_order_give_the_same_file_as_whole_tensors(tmp_path):
    tensor, scalar = torch.randn(9, 4), torch.tensor(2.0)
    specs = [TensorSpec("w", (9, 4), torch.bfloat16), TensorSpec("s", (), torch.float32)]
    with CheckpointWriter(tmp_path / "whole", specs, config=CONFIG) as writer:
        writer.add("w", tensor)
        writer.add("s", scalar)
    with CheckpointWriter(tmp_path / "rows", specs, config=CONFIG) as writer:
        for start, stop in ((6, 9), (0, 2), (2, 6)):
            writer.add_rows("w", start, tensor[start:stop])
        writer.add_rows("s", 0, scalar)
    assert weights(tmp_path / "rows") == weights(tmp_path / "whole")
    assert torch.equal(CheckpointReader(tmp_path / "rows").get("w"), tensor.to(torch.bfloat16))


def test_rows_that_do_not_fit_or_are_missing_fail_and_write_nothing(tmp_path):
    specs = [TensorSpec("w", (9, 4), torch.float32)]
    with pytest.raises(CMAAMError, match="rows 7:10 of shape \\(3, 4\\) do not fit the planned \\(9, 4\\)"):
        with CheckpointWriter(tmp_path / "a", specs) as writer:
            writer.add_rows("w", 7, torch.zeros(3, 4))
    with pytest.raises(CMAAMError, match="1 planned tensors were never written"):
        with CheckpointWriter(tmp_path / "b", specs) as writer:
            writer.add_rows("w", 0, torch.zeros(5, 4))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


CONFIGS = {  # method -> (config, merged by rows)
    "linear": ("merge_method: linear\nmodels:\n  - model: {base}\n    parameters: {{weight: 0.2}}\n"
               "  - model: {ft1}\n    parameters: {{weight: 0.5}}\n  - model: {ft2}\n    parameters: {{weight: 0.3}}\n"
               "dtype: bfloat16\n", True),
    "task_arithmetic": ("merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n  - model: {ft1}\n"
                        "    parameters: {{weight: 0.5}}\n  - model: {ft2}\n    parameters: {{weight: 0.7}}\n", True),
    "ties": ("merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {ft1}\n    parameters: {{weight: 0.5, "
             "density: 0.5}}\n  - model: {ft2}\n    parameters: {{weight: 0.5, density: 0.3}}\n", False),
    "slerp": ("merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {ft1}\n"
              "parameters: {{t: 0.3}}\n", False),
}


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_merges_under_a_small_budget_equal_whole_tensor_merges(family, tmp_path, monkeypatch, reads, method):
    text, by_rows = CONFIGS[method]
    models = family("llama")
    config = tmp_path / "config.yaml"
    config.write_text(text.format(**models))
    merge_from_config(config, tmp_path / "whole", ExecutionOptions(progress=False))
    assert all(start == 0 and stop == rows for _, start, stop, rows in reads)  # default chunk: tensors read whole
    reads.clear()
    monkeypatch.setattr(executor, "COMPUTE_CHUNK_ELEMENTS", SMALL_CHUNK)
    merge_from_config(config, tmp_path / "blocks", ExecutionOptions(max_memory=SMALL_BUDGET, progress=False))
    assert weights(tmp_path / "blocks") == weights(tmp_path / "whole")
    reader = CheckpointReader(models["base"])
    largest = max((name for name in reader.keys()), key=reader.numel)
    if by_rows:  # every read of all of a job's inputs within a quarter of the budget, as float32
        width = reader.numel(largest) // reader.shape(largest)[0]
        assert {(start, stop) for name, start, stop, _ in reads if name == largest} == \
               {(row, row + SMALL_CHUNK // width) for row in range(0, reader.shape(largest)[0], SMALL_CHUNK // width)}
        assert max((stop - start) * reader.numel(name) // rows * 4 * 3 for name, start, stop, rows in reads) \
            <= parse_size(SMALL_BUDGET) // executor.BLOCK_SHARE
    else:  # a global top-k or a norm needs the whole tensor
        assert all(start == 0 and stop == rows for _, start, stop, rows in reads)


@pytest.mark.parametrize("method", ["linear", "ties"])
def test_mapped_views_and_positioned_reads_give_the_same_bytes(family, tmp_path, monkeypatch, method):
    """Inputs read as views of the mapped files (the default) or copied by preadv: the same merged bytes."""
    models = family("llama")
    config = tmp_path / "config.yaml"
    config.write_text(CONFIGS[method][0].format(**models))
    monkeypatch.setattr(executor, "COMPUTE_CHUNK_ELEMENTS", SMALL_CHUNK)
    views = []
    original = CheckpointReader.view_rows
    monkeypatch.setattr(CheckpointReader, "view_rows", lambda self, *a: views.append(a) or original(self, *a))
    for mapped in (True, False):
        monkeypatch.setattr(reader_module, "MAPPED_VIEWS", mapped)
        merge_from_config(config, tmp_path / f"mapped_{mapped}", ExecutionOptions(max_memory=SMALL_BUDGET,
                                                                                  progress=False))
        if mapped:
            assert views, "the merge did not read through mapped views"
    assert weights(tmp_path / "mapped_True") == weights(tmp_path / "mapped_False")


def test_a_larger_budget_reads_ahead_in_larger_blocks_with_the_same_result(family, tmp_path, monkeypatch, reads):
    """Compute inputs are read chunk by chunk whatever the budget; the budget sets the read-ahead blocks."""
    models = family("llama")
    config = tmp_path / "config.yaml"
    config.write_text(CONFIGS["linear"][0].format(**models))
    monkeypatch.setattr(executor, "COMPUTE_CHUNK_ELEMENTS", SMALL_CHUNK)
    ahead = []
    original = CheckpointReader.prefetch_rows
    monkeypatch.setattr(CheckpointReader, "prefetch_rows",
                        lambda self, name, start, stop: ahead.append(stop - start) or original(self, name, start, stop))
    runs = {}
    for budget in (SMALL_BUDGET, "40KB"):
        reads.clear(), ahead.clear()
        merge_from_config(config, tmp_path / budget, ExecutionOptions(max_memory=budget, progress=False))
        runs[budget] = (sorted(reads), list(ahead))
    assert runs[SMALL_BUDGET][0] == runs["40KB"][0]  # the same chunks read
    assert len(runs["40KB"][1]) < len(runs[SMALL_BUDGET][1]) and max(runs["40KB"][1]) > max(runs[SMALL_BUDGET][1])
    assert weights(tmp_path / "40KB") == weights(tmp_path / SMALL_BUDGET)


def test_a_blocks_mapped_pages_are_dropped_once_after_its_rows_are_written(family, tmp_path, monkeypatch):
    """The merge threads read the mapped rows until their outputs are written: each input's block is released
    once, and only when every row of it is in the output."""
    models = family("llama")
    config = tmp_path / "config.yaml"
    config.write_text(CONFIGS["linear"][0].format(**models))
    monkeypatch.setattr(executor, "COMPUTE_CHUNK_ELEMENTS", SMALL_CHUNK)
    written: dict[str, set[int]] = {}
    add, add_rows, release_rows = CheckpointWriter.add, CheckpointWriter.add_rows, CheckpointReader.release_rows

    def recording_add_rows(self, name, start, tensor):
        add_rows(self, name, start, tensor)
        written.setdefault(name, set()).update(range(start, start + (tensor.shape[0] if tensor.dim() else 1)))

    def recording_add(self, name, tensor):
        add(self, name, tensor)
        written.setdefault(name, set()).update(range(tensor.shape[0] if tensor.dim() else 1))

    releases = []

    def recording_release_rows(self, name, start=0, stop=None):
        rows = range(start, self.shape(name)[0] if stop is None else stop)
        releases.append((self.path.name, name, rows.start, rows.stop, set(rows) <= written.get(name, set())))
        release_rows(self, name, start, stop)

    monkeypatch.setattr(CheckpointWriter, "add_rows", recording_add_rows)
    monkeypatch.setattr(CheckpointWriter, "add", recording_add)
    monkeypatch.setattr(CheckpointReader, "release_rows", recording_release_rows)
    merge_from_config(config, tmp_path / "out", ExecutionOptions(max_memory=SMALL_BUDGET, progress=False))
    reader = CheckpointReader(models["base"])
    largest = max(reader.keys(), key=reader.numel)
    blocks = [(start, stop) for folder, name, start, stop, _ in releases if name == largest and folder == "base"]
    assert len(blocks) > 1 and len(set(blocks)) == len(blocks)  # every block once
    assert sorted(blocks)[0][0] == 0 and sorted(blocks)[-1][1] == reader.shape(largest)[0]
    assert releases and all(after_writes for *_, after_writes in releases)


def test_prefetch_advises_exactly_the_rows_bytes(tmp_path, monkeypatch):
    tensors = {"a": torch.randn(1000, 3, 5).to(torch.bfloat16), "b": torch.arange(7)}
    reader = CheckpointReader(write_state_dict(tmp_path / "m", tensors, config={"model_type": "llama"}))
    advised = []
    monkeypatch.setattr(reader_module.os, "posix_fadvise", lambda *call: advised.append(call[1:]))
    reader.prefetch_rows("a", 2, 700)
    reader.prefetch_rows("b")
    header = 8 + int.from_bytes((tmp_path / "m" / "model.safetensors").read_bytes()[:8], "little")
    a_start = header + reader._layout(reader._file("a"))[2]["a"]["data_offsets"][0]
    b_start = header + reader._layout(reader._file("b"))[2]["b"]["data_offsets"][0]
    assert advised == [(a_start + 2 * 30, 698 * 30, reader_module.os.POSIX_FADV_WILLNEED),
                       (b_start, 7 * 8, reader_module.os.POSIX_FADV_WILLNEED)]


def test_sweep_in_row_blocks_equals_whole_tensor_sweep(family, tmp_path, monkeypatch, reads):
    models = family("llama")
    sweep(models["ft1"], models["base"], tmp_path / "whole", "0.3,0.7", ExecutionOptions(progress=False))
    monkeypatch.setattr(executor, "COMPUTE_CHUNK_ELEMENTS", SMALL_CHUNK)
    reads.clear()
    sweep(models["ft1"], models["base"], tmp_path / "blocks", "0.3,0.7",
          ExecutionOptions(max_memory=SMALL_BUDGET, progress=False))
    assert any(stop - start < rows for _, start, stop, rows in reads)
    for alpha in ("alpha_0.3", "alpha_0.7"):
        assert weights(tmp_path / "blocks" / alpha) == weights(tmp_path / "whole" / alpha)


def test_adapted_tensors_are_read_whole_and_the_rest_in_blocks(tiny_llama, llama_adapter, tmp_path, monkeypatch,
                                                                reads):
    from cmaam.io.adapters import open_model

    config = tmp_path / "config.yaml"
    config.write_text(f"merge_method: linear\nmodels:\n  - model: {llama_adapter}\n    parameters: {{weight: 0.6}}\n"
                      f"  - model: {tiny_llama}\n    parameters: {{weight: 0.4}}\ndtype: float32\n")
    merge_from_config(config, tmp_path / "whole", ExecutionOptions(progress=False))
    monkeypatch.setattr(executor, "COMPUTE_CHUNK_ELEMENTS", SMALL_CHUNK)
    reads.clear()
    merge_from_config(config, tmp_path / "blocks", ExecutionOptions(max_memory=SMALL_BUDGET, progress=False))
    assert weights(tmp_path / "blocks") == weights(tmp_path / "whole")
    adapter = open_model(llama_adapter)
    patched = {name for name in adapter.keys() if not adapter.reads_rows(name)}
    assert patched and all(CheckpointReader(tiny_llama).reads_rows(name) for name in patched)
    partial = {name for name, start, stop, rows in reads if stop - start < rows}
    assert partial and not partial & patched
