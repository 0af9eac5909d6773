"""The evolve recipe is plain mergekit: mergekit's own run_merge gives the in-memory merge's tensors."""

from __future__ import annotations

import random

import pytest
import torch

from cmaam.io import CheckpointReader
from cmaam.search.genome import GenomeSpec
from cmaam.search.inmemory import InMemoryMerger
from cmaam.search.recipe import genome_to_mergekit

MergeConfiguration = pytest.importorskip("mergekit.config", reason="mergekit is a dev dependency").MergeConfiguration
run_merge = pytest.importorskip("mergekit.merge").run_merge
MergeOptions = pytest.importorskip("mergekit.options").MergeOptions


@pytest.mark.filterwarnings("ignore")
def test_real_mergekit_reproduces_the_in_memory_slerp(tiny_llama_pair, tmp_path):
    """The recipe is plain mergekit: mergekit's own run_merge gives the same tensors as the in-memory merge."""
    base, other = tiny_llama_pair
    paths = {"base": str(base), "other": str(other)}
    merger = InMemoryMerger(paths, "base", GenomeSpec(method="slerp", granularity="tensor"))
    generator = random.Random(4)
    genome = [generator.uniform(low, high) for low, high in zip(*merger.layout.bounds())]
    merger.apply(genome)
    recipe = genome_to_mergekit(merger.layout, genome, paths, "float32")
    run_merge(MergeConfiguration.model_validate(recipe), str(tmp_path / "mergekit"),
              MergeOptions(copy_tokenizer=False, lazy_unpickle=False, low_cpu_memory=False, quiet=True))
    with CheckpointReader(tmp_path / "mergekit") as written:
        for name in merger.layout.tensor_names:
            assert torch.equal(written.get(name), merger.targets[name].detach()), name
