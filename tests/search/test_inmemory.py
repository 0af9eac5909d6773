"""In-memory merging: same tensors as `python -m cmaam.mergekit` on the saved recipe, in place, no disk writes."""

from __future__ import annotations

import random

import pytest
import torch
import yaml

from cmaam.io.atomic import atomic_write_yaml
from cmaam.io import CheckpointReader
from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.search.fitness import SyntheticFitness
from cmaam.search.genome import GenomeSpec
from cmaam.search.inmemory import InMemoryMerger
from cmaam.search.recipe import genome_from_mergekit, genome_to_mergekit
from cmaam.mergekit import main as mergekit_main


def random_genome(layout, seed: int) -> list[float]:
    generator = random.Random(seed)
    return [generator.uniform(low, high) for low, high in zip(*layout.bounds())]


def write_bytes_of_process() -> tuple[int, int]:
    """(wchar, write_bytes) of this process from /proc/self/io."""
    fields = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
    return int(fields["wchar"]), int(fields["write_bytes"])


@pytest.mark.parametrize("spec", [
    GenomeSpec(method="slerp", granularity="tensor"),
    GenomeSpec(method="ties", granularity="group", layers_per_group=2),
    GenomeSpec(method="dare_ties", granularity="layer"),
    GenomeSpec(method="task_arithmetic", granularity="tensor", lambda_=0.9),
], ids=lambda spec: f"{spec.method}-{spec.granularity}")
def test_in_memory_merge_matches_the_mergekit_recipe(spec, tiny_llama_pair, tmp_path):
    base, other = tiny_llama_pair
    paths = {"base": str(base), "other": str(other)}
    merger = InMemoryMerger(paths, "base", spec, ExecutionOptions(seed=5))
    genome = random_genome(merger.layout, seed=1)
    merger.apply(genome)
    recipe = atomic_write_yaml(tmp_path / "recipe.yaml", genome_to_mergekit(merger.layout, genome, paths, "float32"))
    with pytest.raises(SystemExit) as exit_code:
        from cmaam.core.cli import run_cli
        run_cli(mergekit_main, [str(recipe), str(tmp_path / "out"), "--seed", "5", "--no-progress"])
    assert exit_code.value.code == 0
    with CheckpointReader(tmp_path / "out") as written:
        for name in merger.layout.tensor_names:
            assert torch.equal(written.get(name), merger.targets[name].detach()), name
    assert genome_from_mergekit(merger.layout, recipe, paths) == pytest.approx(genome, abs=1e-12)
    reference = CheckpointReader(base)
    changed = [n for n in merger.layout.tensor_names if not torch.equal(reference.get(n), merger.targets[n].detach())]
    assert len(changed) == len(merger.layout.tensor_names)  # every tensor really was merged


def test_apply_overwrites_the_preallocated_model_in_place_without_writing(tiny_llama_pair):
    base, other = tiny_llama_pair
    merger = InMemoryMerger({"base": base, "other": other}, "base", GenomeSpec(granularity="layer"))
    pointers = {name: tensor.data_ptr() for name, tensor in merger.targets.items()}
    parameters = dict(merger.model.named_parameters())
    fitness = SyntheticFitness(merger, [0.3] * len(merger.layout))
    before = write_bytes_of_process()
    evaluation = fitness([0.7] * len(merger.layout))
    after = write_bytes_of_process()
    assert after == before  # no byte written by the merge and scoring of a candidate
    assert {name: tensor.data_ptr() for name, tensor in merger.targets.items()} == pointers
    assert parameters["model.layers.1.mlp.up_proj.weight"].data_ptr() == pointers["model.layers.1.mlp.up_proj.weight"]
    assert evaluation.fitness < 0 and fitness([0.3] * len(merger.layout)).fitness == 0.0
    # t = 0 gives back the base model exactly
    merger.apply([0.0] * len(merger.layout))
    with CheckpointReader(base) as reader:
        assert all(torch.equal(reader.get(n), merger.targets[n].detach()) for n in reader.keys())


def test_genome_from_a_finer_recipe_is_refused(tiny_llama_pair, tmp_path):
    base, other = tiny_llama_pair
    paths = {"base": str(base), "other": str(other)}
    fine = InMemoryMerger(paths, "base", GenomeSpec(granularity="tensor")).layout
    coarse = InMemoryMerger(paths, "base", GenomeSpec(granularity="layer")).layout
    recipe = tmp_path / "fine.yaml"
    recipe.write_text(yaml.safe_dump(genome_to_mergekit(fine, random_genome(fine, 2), paths)))
    with pytest.raises(CMAAMError, match="different values inside one layer unit"):
        genome_from_mergekit(coarse, recipe, paths)
