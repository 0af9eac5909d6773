"""The execution options: one flag spelling, one meaning and one default in every command's parser."""

from __future__ import annotations

import argparse
import dataclasses
import importlib

import pytest

from cmaam.core.errors import CMAAMError
from cmaam.core.options import ALL, ExecutionOptions, add_execution_options

DEFAULTS = ExecutionOptions()
FLAGS = {"device": "--device", "dtype": "--dtype", "max_shard_size": "--max-shard-size", "max_memory": "--max-memory",
         "overwrite": "--overwrite", "allow_pickle": "--allow-pickle", "allow_nonfinite": "--allow-nonfinite",
         "trust_remote_code": "--trust-remote-code", "seed": "--seed", "progress": "--no-progress"}
# command -> (the arguments it requires, the execution options it offers)
COMMANDS = {
    "cmaam.merge": (["--source", "s", "--target", "t", "--output", "o"],
                    {"device", "dtype", "max_shard_size", "max_memory", "overwrite", "allow_pickle", "allow_nonfinite",
                     "progress", "seed", "trust_remote_code"}),  # seed, trust_remote_code: for --adapt
    "cmaam.sweep": (["--source", "s", "--target", "t", "--alphas", "0.5", "--output-dir", "o"],
                    {"device", "dtype", "max_shard_size", "max_memory", "overwrite", "allow_pickle", "allow_nonfinite",
                     "progress"}),
    "cmaam.mergekit": (["config.yaml", "o"], {"device", "dtype", "max_shard_size", "max_memory", "overwrite",
                                              "allow_pickle", "allow_nonfinite", "seed", "progress"}),
    "cmaam.soups": (["o", "a", "b"],
                    {"device", "dtype", "max_shard_size", "max_memory", "overwrite", "allow_pickle", "allow_nonfinite",
                     "progress"}),
    "cmaam.check": (["a", "b"], {"allow_pickle"}),
    "cmaam.layouts": (["a"], {"allow_pickle"}),
    "cmaam.tiny": (["--output", "o"], {"seed", "overwrite"}),
    "eval.mgsm.__main__": (["--model", "m", "--lang", "en"],
                           {"device", "dtype", "trust_remote_code", "allow_pickle", "overwrite", "progress"}),
    "eval.vqa.__main__": (["--model", "m", "--data", "d.jsonl"],
                          {"device", "dtype", "trust_remote_code", "allow_pickle", "overwrite", "progress"}),
    "finetune.lora_vqa": (["--model", "m", "--data", "d", "--output", "o"],
                          {"seed", "overwrite", "trust_remote_code", "progress"}),
    "finetune.synthetic_vqa": (["--output", "o"], {"seed", "overwrite", "progress"}),
    "finetune.data_prep": (["--source", "s", "--output", "o"], {"seed", "overwrite", "progress"}),
}
# commands whose values come from a config file: a flag overrides the config only when given
FROM_CONFIG = {
    "cmaam.evolve": (["--config", "tiny"],
                     {"device", "dtype", "seed", "allow_pickle", "trust_remote_code", "progress"}),
    "cmaam.experiment": (["demo"], {"device", "seed"}),
}


def option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.dest in FLAGS}


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_every_command_has_the_same_flags_and_defaults(module):
    required, offered = COMMANDS[module]
    parser = importlib.import_module(module).build_parser()
    actions = option_actions(parser)
    assert set(actions) == offered
    for name, action in actions.items():
        assert action.option_strings == [FLAGS[name]], (module, name)  # one spelling, never redefined
    options = ExecutionOptions.from_args(parser.parse_args(required))
    assert options == DEFAULTS  # every default is the shared one (device auto, seed 0, progress on, ...)


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_every_flag_sets_the_same_field(module):
    required, offered = COMMANDS[module]
    parser = importlib.import_module(module).build_parser()
    given = {"device": ["--device", "cpu"], "dtype": ["--dtype", "bfloat16"],
             "max_shard_size": ["--max-shard-size", "2GB"], "max_memory": ["--max-memory", "3GiB"],
             "overwrite": ["--overwrite"], "allow_pickle": ["--allow-pickle"], "allow_nonfinite": ["--allow-nonfinite"],
             "trust_remote_code": ["--trust-remote-code"], "seed": ["--seed", "7"], "progress": ["--no-progress"]}
    expected = {"device": "cpu", "dtype": "bfloat16", "max_shard_size": "2GB", "max_memory": "3GiB", "overwrite": True,
                "allow_pickle": True, "allow_nonfinite": True, "trust_remote_code": True, "seed": 7, "progress": False}
    arguments = [argument for name in sorted(offered) for argument in given[name]]
    options = ExecutionOptions.from_args(parser.parse_args(required + arguments))
    assert options == dataclasses.replace(DEFAULTS, **{name: expected[name] for name in offered})


@pytest.mark.parametrize("module", sorted(FROM_CONFIG))
def test_config_commands_override_only_given_flags(module):
    required, offered = FROM_CONFIG[module]
    parser = importlib.import_module(module).build_parser()
    actions = option_actions(parser)
    assert set(actions) == offered and all(actions[name].option_strings == [FLAGS[name]] for name in offered)
    assert not offered & set(vars(parser.parse_args(required)))  # nothing given: the config decides
    base = ExecutionOptions(device="cuda", seed=3)
    assert ExecutionOptions.from_args(parser.parse_args(required), base) == base
    given = parser.parse_args([*required, "--seed", "5"])
    assert ExecutionOptions.from_args(given, base) == dataclasses.replace(base, seed=5)


def test_add_execution_options_adds_only_the_named_flags_in_one_group():
    parser = argparse.ArgumentParser()
    group = add_execution_options(parser, ("device", "progress"))
    assert group.title == "execution options"
    assert {action.dest for action in group._group_actions} == {"device", "progress"}
    assert vars(parser.parse_args([])) == {"device": "auto", "progress": True}
    with pytest.raises(ValueError, match="unknown execution options"):
        add_execution_options(argparse.ArgumentParser(), ("device", "gpu"))
    full = argparse.ArgumentParser()
    add_execution_options(full, ALL)
    assert ExecutionOptions.from_args(full.parse_args([])) == DEFAULTS


@pytest.mark.parametrize("changes, message", [
    ({"seed": -1}, "--seed must be >= 0, got -1"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"max_memory": "0GB"}, "--max-memory: size must be positive"),
])
def test_bad_values_are_one_line_errors(changes, message):
    with pytest.raises(CMAAMError, match=message):
        dataclasses.replace(DEFAULTS, **changes).validate()
    for device in ("auto", "cpu", "cuda", "cuda:1", "mps"):
        dataclasses.replace(DEFAULTS, device=device).validate()
