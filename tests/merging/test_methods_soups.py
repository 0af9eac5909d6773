"""Uniform and greedy soups: averaged tensors, recorded greedy decisions, atomic output, one-line errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from cmaam.io import CheckpointReader, write_state_dict
from cmaam.core.cli import run_cli
from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.merging.soups import DECISIONS_FILE, greedy_soup, uniform_soup
from cmaam.soups import main

QUIET = ExecutionOptions(device="cpu", progress=False)


def _toy(folder, value, extra=None):
    """A one-tensor 'model' whose weights all equal ``value`` (plus an integer buffer the soup must copy)."""
    tensors = {"w": torch.full((3,), float(value)), "step": torch.tensor([7])}
    tensors.update(extra or {})
    return write_state_dict(folder, tensors, config={"model_type": "toy"})


def _value(path):
    with CheckpointReader(path) as reader:
        return reader.get("w")


def _distance_to_one(calls):
    def score(path):
        calls.append(path)
        return -abs(_value(path).mean().item() - 1.0)
    return score


@pytest.fixture
def toys(tmp_path):
    values = {"a": 1.2, "b": 0.6, "c": 3.0, "d": 0.9}
    return {name: _toy(tmp_path / name, value) for name, value in values.items()}


def test_greedy_soup_decisions(toys, tmp_path):
    """Scores -|mean - 1|: own d -0.1, a -0.2, b -0.4, c -2.0. Soup {d}; +a -> 1.05 (-0.05) kept;
    +b -> 0.9 (-0.1) dropped; +c -> 1.7 (-0.7) dropped."""
    calls = []
    out = tmp_path / "soup"
    result = greedy_soup([toys[k] for k in "abcd"], _distance_to_one(calls), out, QUIET)
    assert [decision.ingredient for decision in result.decisions] == [str(toys[k]) for k in "dabc"]
    assert [decision.accepted for decision in result.decisions] == [True, True, False, False]
    assert [decision.soup_size for decision in result.decisions] == [1, 2, 2, 2]
    assert [round(decision.soup_score, 4) for decision in result.decisions] == [-0.1, -0.05, -0.1, -0.7]
    assert result.ingredients == [str(toys["d"]), str(toys["a"])]
    assert result.score == pytest.approx(-0.05, abs=1e-6)
    assert torch.allclose(_value(out), torch.full((3,), 1.05))
    with CheckpointReader(out) as reader:
        assert torch.equal(reader.get("step"), torch.tensor([7]))
    recorded = json.loads((out / DECISIONS_FILE).read_text())
    assert recorded == json.loads(json.dumps(result.to_dict()))
    assert len(calls) == 4 + 3  # each ingredient once, then one candidate per remaining ingredient
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "d", "soup"]  # work folder removed


def test_greedy_soup_keeps_ingredients_when_score_does_not_drop(toys, tmp_path):
    result = greedy_soup([toys[k] for k in "abcd"], lambda path: 0.5, tmp_path / "soup", QUIET)
    assert all(decision.accepted for decision in result.decisions)
    assert result.ingredients == [str(toys[k]) for k in "abcd"]  # equal scores keep input order
    assert torch.allclose(_value(tmp_path / "soup"), torch.full((3,), (1.2 + 0.6 + 3.0 + 0.9) / 4))


def test_greedy_soup_of_one_best_ingredient(tmp_path):
    paths = [_toy(tmp_path / "x", 2.0), _toy(tmp_path / "y", 1.0), _toy(tmp_path / "z", 3.5)]
    result = greedy_soup(paths, _distance_to_one([]), tmp_path / "soup", QUIET)
    assert result.ingredients == [str(paths[1])]
    assert [d.accepted for d in result.decisions] == [True, False, False]
    assert torch.equal(_value(tmp_path / "soup"), torch.full((3,), 1.0))
    assert (tmp_path / "soup" / DECISIONS_FILE).is_file()


def test_greedy_soup_bad_score_leaves_nothing(toys, tmp_path):
    with pytest.raises(CMAAMError, match="score function returned nan"):
        greedy_soup([toys["a"], toys["b"]], lambda path: float("nan"), tmp_path / "soup", QUIET)
    scores = iter([1.0, 0.5, "oops"])
    with pytest.raises(CMAAMError, match="not a number"):
        greedy_soup([toys["a"], toys["b"]], lambda path: next(scores), tmp_path / "soup", QUIET)

    def interrupted(path):
        if path.name.startswith("candidate"):
            raise KeyboardInterrupt
        return 1.0
    with pytest.raises(KeyboardInterrupt):
        greedy_soup([toys["a"], toys["b"]], interrupted, tmp_path / "soup", QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "d"]


def test_uniform_soup_of_tiny_llamas(tiny_llama_pair, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cmaam.testing.tiny import perturb_model

    models = [*tiny_llama_pair, perturb_model(tiny_llama_pair[0], tmp_path / "third", 0.05, seed=2)]
    out = uniform_soup(models, tmp_path / "soup", QUIET)
    readers = [CheckpointReader(path) for path in models]
    with CheckpointReader(out) as merged:
        assert merged.keys() == readers[0].keys()
        for name in merged.keys():
            expected = sum(reader.get(name) for reader in readers) / 3
            assert (merged.get(name) - expected).abs().max().item() <= 1e-6
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("soup", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
    bf16 = uniform_soup(models, tmp_path / "soup16", ExecutionOptions(device="cpu", dtype="bfloat16", progress=False))
    with CheckpointReader(bf16) as reader:
        assert {reader.dtype(name) for name in reader.keys()} == {torch.bfloat16}


def test_uniform_soup_errors_leave_no_output(toys, tmp_path):
    odd = _toy(tmp_path / "odd", 1.0, extra={"extra.weight": torch.zeros(2)})
    with pytest.raises(CMAAMError, match=r"tensors differ .*extra \['extra.weight'\]"):
        uniform_soup([toys["a"], odd], tmp_path / "soup", QUIET)
    with pytest.raises(CMAAMError, match="at least one model"):
        uniform_soup([], tmp_path / "soup", QUIET)
    assert not (tmp_path / "soup").exists()
    uniform_soup([toys["a"], toys["b"]], tmp_path / "soup", QUIET)
    with pytest.raises(CMAAMError, match="already exists"):
        uniform_soup([toys["c"], toys["d"]], tmp_path / "soup", QUIET)
    assert torch.allclose(_value(tmp_path / "soup"), torch.full((3,), 0.9))
    uniform_soup([toys["c"], toys["d"]], tmp_path / "soup", dataclasses.replace(QUIET, overwrite=True))
    assert torch.allclose(_value(tmp_path / "soup"), torch.full((3,), 1.95))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli(toys, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(tmp_path / "soup"), str(toys["a"]), str(toys["c"]), "--dtype", "float32"])
    assert exit_info.value.code == 0
    assert torch.allclose(_value(tmp_path / "soup"), torch.full((3,), 2.1))
    assert "wrote the uniform soup of 2 models" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [str(tmp_path / "new"), str(toys["a"]), str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "missing: no such model folder" in error and error.count("\n") == 1
    assert not (tmp_path / "new").exists()
