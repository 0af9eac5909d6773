"""The reader trusts model.safetensors.index.json only as far as it names .safetensors files inside the folder."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from cmaam import merge
from cmaam.io import CheckpointReader
from cmaam.core.errors import CMAAMError
from io_helpers import assert_one_error_line


@pytest.fixture
def sharded(tmp_path):
    """A model folder with one shard listed in an index; ``write_index(weight_map)`` replaces the index."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    save_file({"a": torch.ones(2)}, str(folder / "part-1.safetensors"))

    def write_index(weight_map) -> CheckpointReader:
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        return folder

    return write_index


@pytest.mark.parametrize("name", ["../outside.safetensors", "../../outside.safetensors", "/tmp/outside.safetensors",
                                  "sub/../../outside.safetensors"])
def test_index_entries_may_not_leave_the_model_folder(sharded, tmp_path, name):
    save_file({"b": torch.zeros(2)}, str(tmp_path / "outside.safetensors"))
    folder = sharded({"a": "part-1.safetensors", "b": name})
    with pytest.raises(CMAAMError, match="lies outside the model folder"):
        CheckpointReader(folder)


def test_a_folder_link_leading_out_is_refused_but_a_linked_file_is_read(sharded, tmp_path):
    """Hugging Face cache snapshots link each file to a blob elsewhere: that stays readable."""
    elsewhere = tmp_path / "blobs"
    elsewhere.mkdir()
    save_file({"b": torch.full((2,), 3.0)}, str(elsewhere / "blob"))
    folder = sharded({"a": "part-1.safetensors", "b": "part-2.safetensors"})
    (folder / "part-2.safetensors").symlink_to(elsewhere / "blob")
    assert torch.equal(CheckpointReader(folder).get("b"), torch.full((2,), 3.0))
    (folder / "sub").symlink_to(elsewhere, target_is_directory=True)
    shutil.copy(elsewhere / "blob", elsewhere / "x.safetensors")
    with pytest.raises(CMAAMError, match="lies outside the model folder"):
        CheckpointReader(sharded({"a": "part-1.safetensors", "b": "sub/x.safetensors"}))


def test_a_pickle_named_in_the_safetensors_index_needs_allow_pickle(sharded):
    folder = sharded({"a": "part-1.safetensors", "b": "part-2.bin"})
    torch.save({"b": torch.full((2,), 5.0)}, folder / "part-2.bin")
    with pytest.raises(CMAAMError, match=r"part-2.bin is not a .safetensors file.*--allow-pickle"):
        CheckpointReader(folder)
    assert torch.equal(CheckpointReader(folder, allow_pickle=True).get("b"), torch.full((2,), 5.0))


@pytest.mark.parametrize("weight_map", [{"a": 5}, {"a": None}, {"a": ["part-1.safetensors"]}, {"a": ""},
                                        ["part-1.safetensors"], "part-1.safetensors"])
def test_malformed_weight_map_is_one_error(sharded, weight_map):
    with pytest.raises(CMAAMError, match="malformed index"):
        CheckpointReader(sharded(weight_map))


def test_merge_cli_reports_a_bad_index_in_one_line(sharded, place, call, tmp_path):
    folder = sharded({"a": 7})
    target = place("T", "T")
    code, _, err = call(merge.main, ["--source", folder, "--target", target, "--output", tmp_path / "out"])
    assert_one_error_line(code, err, "malformed index")
    assert not (tmp_path / "out").exists()
