"""Execution options shared by every command and library call: device, dtype, output writing, trust, seed, progress.

One dataclass (``ExecutionOptions``), one function that adds its flags to a parser
(``add_execution_options``) and one ``ExecutionOptions.from_args``: a flag means the same thing, with the
same default, in every command. A command adds only the flags that apply to it (``names``); a command whose
values come from a config file adds them with ``from_config=True``, so a flag overrides the config only
when it is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from cmaam.core.errors import CMAAMError

DTYPES = ("bfloat16", "float16", "float32")
DEFAULT_MAX_MEMORY = "1GiB"


def parse_size(size: str | int) -> int:
    """'5GB', '500MB', '2GiB', '1e9' or an int -> bytes."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise CMAAMError(f"size must be positive, got {size!r}")
        return size
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)(I?B?)\s*", str(size).upper())
    if not match:
        raise CMAAMError(f"bad size {size!r} (examples: 5GB, 500MB)")
    try:
        number = float(match.group(1))
    except ValueError:
        raise CMAAMError(f"bad size {size!r} (examples: 5GB, 500MB)") from None
    base = 1024 if match.group(3) == "IB" else 1000
    power = " KMGT".index(match.group(2) or " ")
    value = int(number * base**power)
    if value <= 0:
        raise CMAAMError(f"size must be positive, got {size!r}")
    return value


@dataclass
class ExecutionOptions:
    """How a command computes and writes, independent of what it computes."""

    device: str = "auto"  # auto (cuda when available), cpu, cuda, cuda:N
    dtype: Any = None  # bfloat16 | float16 | float32 (or a torch dtype); None: as stored
    max_shard_size: str | int = "5GB"  # largest output safetensors shard
    max_memory: str | int = DEFAULT_MAX_MEMORY  # working memory for tensors: larger ones stream in row blocks
    overwrite: bool = False  # replace an existing output
    allow_pickle: bool = False  # read pickled .bin/.pt checkpoints (torch.load weights_only=True)
    adapter_base: str | None = None  # base model of peft LoRA adapter inputs (default: their adapter_config.json's)
    allow_nonfinite: bool = False  # merge even if a tensor holds NaN or Inf
    trust_remote_code: bool = False  # run a model folder's own Python code
    seed: int = 0  # seed of every random choice (data, initialisation, dare masks, search)
    progress: bool = True  # tqdm progress bars

    def validate(self) -> None:
        """One-line errors for a negative seed or a device that is not spelt cpu, cuda[:N], mps or auto."""
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise CMAAMError(f"--seed must be >= 0, got {self.seed!r}")
        device = str(self.device)
        if device not in ("auto", "cpu") and not device.startswith(("cuda", "mps")):
            raise CMAAMError(f"unknown device {device!r} (cpu, cuda, cuda:N or auto)")
        try:
            parse_size(self.max_memory)
        except CMAAMError as error:
            raise CMAAMError(f"--max-memory: {error}") from None

    @classmethod
    def from_args(cls, args: argparse.Namespace, base: ExecutionOptions | None = None) -> ExecutionOptions:
        """The options a parsed command line asks for; fields it has no flag for (or that were not given,
        with ``from_config=True``) keep ``base``'s values (default: the defaults above)."""
        base = base or cls()
        given = {field.name: getattr(args, field.name) for field in dataclasses.fields(cls)
                 if hasattr(args, field.name)}
        options = dataclasses.replace(base, **given)
        options.validate()
        return options


# name -> (flag, argparse keywords, help). Booleans are off by default and switched on by their flag
# (progress: on by default, switched off by --no-progress).
_FLAGS: dict[str, tuple[str, dict[str, Any], str]] = {
    "device": ("--device", {"metavar": "DEVICE"}, "auto (cuda when available), cpu, cuda or cuda:N (default: auto)"),
    "dtype": ("--dtype", {"metavar": "DTYPE"},
              "bfloat16, float16 or float32 for the model's floating tensors (default: as stored)"),
    "max_shard_size": ("--max-shard-size", {"metavar": "SIZE"}, "largest output shard, e.g. 5GB or 500MB "
                                                                "(default: 5GB)"),
    "max_memory": ("--max-memory", {"metavar": "SIZE"},
                   "working memory for tensors, e.g. 1GiB or 4GB: tensors larger than a quarter of it are read, "
                   "scored and merged in row blocks, so peak memory follows it rather than the largest tensor "
                   f"(default: {DEFAULT_MAX_MEMORY})"),
    "overwrite": ("--overwrite", {"action": "store_true"}, "replace an existing output"),
    "allow_pickle": ("--allow-pickle", {"action": "store_true"},
                     "read pickled .bin/.pt checkpoints (torch.load with weights_only=True)"),
    "adapter_base": ("--adapter-base", {"metavar": "BASE"},
                     "base model of peft LoRA adapter folders given as models (default: their adapter_config.json's)"),
    "allow_nonfinite": ("--allow-nonfinite", {"action": "store_true"}, "go on even if a tensor holds NaN or Inf"),
    "trust_remote_code": ("--trust-remote-code", {"action": "store_true"}, "run the model folder's own Python code"),
    "seed": ("--seed", {"type": int, "metavar": "N"}, "seed of every random choice (default: 0)"),
    "progress": ("--no-progress", {"action": "store_false", "dest": "progress"}, "hide progress bars"),
}
ALL = tuple(_FLAGS)
# The usual sets: a merge (read, compute, write a model) and reading a model only.
MERGE = ("device", "dtype", "max_shard_size", "max_memory", "overwrite", "allow_pickle", "adapter_base",
         "allow_nonfinite", "progress")
READ = ("allow_pickle", "adapter_base")
DATA = ("seed", "overwrite", "progress")  # data sets written from a seed


def add_execution_options(parser: argparse.ArgumentParser, names: Iterable[str] = MERGE, *,
                          from_config: bool = False, help: Mapping[str, str] | None = None) -> Any:
    """Add the flags of ``names`` (ExecutionOptions fields) to ``parser`` in an "execution" group.

    ``from_config``: a flag not given leaves the attribute out of the namespace, so ``from_args(args,
    base=config_options)`` keeps the config's value. ``help`` replaces a flag's help where a command
    needs a more specific sentence (the meaning and the default stay the same).
    """
    unknown = [name for name in names if name not in _FLAGS]
    if unknown:
        raise ValueError(f"unknown execution options {unknown} (known: {', '.join(_FLAGS)})")
    defaults = ExecutionOptions()
    group = parser.add_argument_group("execution options")
    for name in names:
        flag, keywords, text = _FLAGS[name]
        keywords = dict(keywords)
        keywords["default"] = argparse.SUPPRESS if from_config else getattr(defaults, name)
        text = (help or {}).get(name, text)
        if from_config:
            text = text.split(" (default:")[0] + " (default: the config's)"
        group.add_argument(flag, help=text, **keywords)
    return group
