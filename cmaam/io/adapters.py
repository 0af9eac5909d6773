"""peft LoRA adapter folders as model inputs: the base's tensors with W + scale * B @ A applied as each is read.

``open_model(path)`` returns a plain ``CheckpointReader`` for a model folder and an ``AdapterReader`` for a peft
LoRA folder (adapter_config.json + adapter_model.safetensors). The adapter reader is the base model's reader
whose adapted tensors are computed when loaded, one at a time, so the merged model never exists in memory.
Names: peft names modules as the running model does (transformers 5: ``model.language_model.layers.N`` for
Qwen2-VL) while checkpoints keep the hub names; both are matched through ``cmaam.io.names``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cmaam.core.errors import CMAAMError
from cmaam.io.files import read_json
from cmaam.io.names import NameIndex
from cmaam.io.reader import CheckpointReader

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_PREFIXES = ("base_model.model.", "base_model.")
LORA_SUFFIXES = {  # key suffix -> (part, kind)
    ".lora_A.weight": ("A", "matrix"),
    ".lora_B.weight": ("B", "matrix"),
    ".lora_embedding_A": ("A", "embedding"),
    ".lora_embedding_B": ("B", "embedding"),
    ".lora_B.bias": ("bias", "matrix"),
}


def is_adapter_folder(path: str | Path) -> bool:
    """True for a folder holding a peft adapter (adapter_config.json) and no full model weights."""
    path = Path(path)
    if not (path / ADAPTER_CONFIG).is_file():
        return False
    return not ((path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file())


@dataclass
class LoraSettings:
    """The fields of adapter_config.json that decide the effective weights."""

    base_model: str | None
    lora_alpha: float
    use_rslora: bool = False
    fan_in_fan_out: bool = False
    lora_bias: bool = False
    alpha_pattern: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_file(cls, path: Path) -> "LoraSettings":
        data = read_json(path, "no adapter_config.json")
        if not isinstance(data, dict):
            raise CMAAMError(f"{path}: expected a JSON object")
        kind = str(data.get("peft_type", "")).upper()
        if kind != "LORA":
            raise CMAAMError(f"{path}: peft_type {data.get('peft_type')!r} is not supported (only LoRA adapters)")
        if data.get("use_dora"):
            raise CMAAMError(f"{path}: DoRA adapters (use_dora) are not supported; merge it with peft's "
                             "merge_and_unload and pass the merged model folder")
        if data.get("trainable_token_indices"):
            raise CMAAMError(f"{path}: trainable_token_indices is not supported; merge the adapter with peft's "
                             "merge_and_unload and pass the merged model folder")
        alpha = data.get("lora_alpha", 8)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise CMAAMError(f"{path}: lora_alpha must be a number, got {alpha!r}")
        return cls(base_model=data.get("base_model_name_or_path"), lora_alpha=float(alpha),
                   use_rslora=bool(data.get("use_rslora")), fan_in_fan_out=bool(data.get("fan_in_fan_out")),
                   lora_bias=bool(data.get("lora_bias")), alpha_pattern=dict(data.get("alpha_pattern") or {}))

    def scale(self, module: str, rank: int) -> float:
        """peft's scaling of one module: alpha / r (alpha / sqrt(r) with rsLoRA), alpha from alpha_pattern."""
        alpha = self.lora_alpha
        for pattern, value in self.alpha_pattern.items():  # peft's get_pattern_key: first pattern matching the end
            if re.match(rf"(.*\.)?({pattern})$", module):
                alpha = float(value)
                break
        return alpha / (math.sqrt(rank) if self.use_rslora else rank)


@dataclass
class Patch:
    """How one base tensor changes: replaced by an adapter tensor and/or shifted by a low-rank product."""

    module: str
    replacement: str | None = None
    kind: str | None = None  # "matrix" (linear / conv) or "embedding"
    lora: dict[str, str] = field(default_factory=dict)  # A, B (or bias: lora_B.bias) -> adapter tensor name


def _strip_prefix(key: str) -> str:
    for prefix in ADAPTER_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def resolve_base(adapter: Path, settings: LoraSettings, adapter_base: str | Path | None) -> Path:
    """The base model folder: ``adapter_base`` if given, else base_model_name_or_path (a folder, relative to the
    working folder or to the adapter, or a hub id already in the Hugging Face cache)."""
    if adapter_base is not None:
        base = Path(adapter_base).expanduser()
        if not base.is_dir():
            raise CMAAMError(f"--adapter-base {adapter_base}: no such model folder")
        return base
    reference = settings.base_model
    if not reference:
        raise CMAAMError(f"{adapter}: adapter without a base model (adapter_config.json has no "
                         "base_model_name_or_path); pass --adapter-base BASE")
    for candidate in (Path(reference).expanduser(), adapter / reference):
        if candidate.is_dir():
            return candidate
    from cmaam.io.locate import local_model_path

    try:
        return local_model_path(reference, "adapter base")
    except CMAAMError:
        raise CMAAMError(f"{adapter}: its base model {reference!r} (adapter_config.json) is not a local folder "
                         "or in the Hugging Face cache; pass --adapter-base BASE") from None


class AdapterReader(CheckpointReader):
    """The base model's reader with a peft LoRA adapter applied: tensors of the adapted model, loaded on demand.

    ``path`` is the adapter folder, ``base_path`` the base model's; names, shapes and the config are the base's.
    """

    def __init__(self, path: str | Path, allow_pickle: bool = False, adapter_base: str | Path | None = None):
        adapter = Path(path)
        self.settings = LoraSettings.from_file(adapter / ADAPTER_CONFIG)
        base = resolve_base(adapter, self.settings, adapter_base)
        if is_adapter_folder(base):
            raise CMAAMError(f"{adapter}: its base {base} is itself an adapter; give the base model folder")
        super().__init__(base, allow_pickle=allow_pickle)
        self.base_path = self.path
        self.path = adapter
        self.weights = CheckpointReader(adapter, allow_pickle=allow_pickle, require_config=False)
        self.patches = self._plan()

    # -- planning ------------------------------------------------------------------------------
    def _plan(self) -> dict[str, Patch]:
        """Which base tensor every adapter tensor changes (checked against the base's names and shapes)."""
        index = NameIndex(self.keys())
        patches: dict[str, Patch] = {}

        def base_name(runtime: str, key: str) -> str:
            found = index.find(runtime)
            if found is None:
                raise CMAAMError(f"{self.path}: adapter tensor {key!r} changes {runtime!r}, which the base model "
                                 f"{self.base_path} does not have (wrong base? pass --adapter-base)")
            return found

        def patch(runtime: str, key: str, module: str) -> Patch:
            name = base_name(runtime, key)
            return patches.setdefault(name, Patch(module))

        for key in self.weights.keys():
            local = _strip_prefix(key)
            if ".lora_magnitude_vector" in local:
                raise CMAAMError(f"{self.path}: DoRA adapters are not supported ({key})")
            suffix = next((s for s in LORA_SUFFIXES if local.endswith(s)), None)
            if suffix is None:
                if ".lora_" in local or ".token_adapter." in local:
                    raise CMAAMError(f"{self.path}: unsupported adapter tensor {key!r}")
                runtime = local.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
                patch(runtime, key, runtime.rsplit(".", 1)[0]).replacement = key
                continue
            module = local[: -len(suffix)]
            part, kind = LORA_SUFFIXES[suffix]
            if part == "bias":
                if not self.settings.lora_bias:
                    logger.warning("%s: %s ignored (lora_bias is false in adapter_config.json, as peft does)",
                                   self.path, key)
                    continue
                patch(module + ".bias", key, module).lora["bias"] = key
                continue
            entry = patch(module + ".weight", key, module)
            entry.kind = kind
            entry.lora[part] = key
        for name, entry in patches.items():
            self._check(name, entry)
        return patches

    def _check(self, name: str, entry: Patch) -> None:
        base_shape = self.shape(name)
        if entry.replacement is not None and self.weights.shape(entry.replacement) != base_shape:
            raise CMAAMError(f"{self.path}: {entry.replacement} has shape {self.weights.shape(entry.replacement)} "
                             f"but the base's {name} has {base_shape} (vocabulary resized for fine-tuning? merge "
                             "the adapter with peft first)")
        if "bias" in entry.lora or not entry.lora:
            return
        if set(entry.lora) != {"A", "B"}:
            raise CMAAMError(f"{self.path}: {entry.module} has only lora_{next(iter(entry.lora))} "
                             "(its pair is missing)")
        a_shape, b_shape = self.weights.shape(entry.lora["A"]), self.weights.shape(entry.lora["B"])
        if entry.kind == "embedding":
            expected = (a_shape[1], b_shape[0]) if len(a_shape) == len(b_shape) == 2 else None
        elif len(a_shape) == 2 and len(b_shape) == 2:
            expected = (b_shape[0], a_shape[1])
            if self.settings.fan_in_fan_out:
                expected = expected[::-1]
        elif len(a_shape) == len(b_shape) > 2 and all(size == 1 for size in b_shape[2:]):
            expected = (b_shape[0], *a_shape[1:])
        else:
            expected = None
        if expected is None or a_shape[0] != b_shape[1] or tuple(expected) != base_shape:
            raise CMAAMError(f"{self.path}: LoRA of {entry.module} (A {a_shape}, B {b_shape}) does not fit the "
                             f"base's {name} {base_shape}")

    # -- reading -------------------------------------------------------------------------------
    @property
    def files(self) -> list[Path]:
        """The base's weight files and the adapter's (inputs of anything written from this model)."""
        return [*super().files, *self.weights.files]

    @property
    def reference_folder(self) -> Path:
        """The base model folder (its config, tokenizer and processor files describe the adapted model)."""
        return self.base_path

    def delta(self, name: str, device: str | torch.device = "cpu") -> torch.Tensor | None:
        """scale * B @ A for one base tensor (float32), None when the adapter does not shift it."""
        entry = self.patches.get(name)
        if entry is None or not entry.lora:
            return None
        if "bias" in entry.lora:
            rank = self.weights.shape(entry.lora["bias"].replace(".lora_B.bias", ".lora_A.weight"))[0]
            bias = self.weights.get(entry.lora["bias"], device=device, dtype=torch.float32)
            return bias * self.settings.scale(entry.module, rank)
        a = self.weights.get(entry.lora["A"], device=device, dtype=torch.float32)
        b = self.weights.get(entry.lora["B"], device=device, dtype=torch.float32)
        scale = self.settings.scale(entry.module, a.shape[0])
        if entry.kind == "embedding":
            return (b @ a).T * scale
        if a.dim() == 2:
            product = b @ a
            return (product.T if self.settings.fan_in_fan_out else product) * scale
        return torch.einsum("or,ri...->oi...", b.flatten(1), a) * scale  # convolution: lora_B is a 1x1 kernel

    def reads_rows(self, name: str) -> bool:
        """Only tensors the adapter leaves alone are rows of the base's file."""
        return name not in self.patches

    def get(self, name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor of the adapted model: the base's (or the adapter's replacement) plus scale * B @ A.

        Computed in float32, returned in ``dtype`` (default: the base's stored dtype).
        """
        entry = self.patches.get(name)
        if entry is None:
            return super().get(name, device=device, dtype=dtype)
        source = self.weights if entry.replacement is not None else None
        weight = (source.get(entry.replacement, device=device) if source is not None
                  else super().get(name, device=device))
        stored = self.dtype(name)
        shift = self.delta(name, device)
        if shift is not None:
            weight = weight.to(torch.float32) + shift
        return weight.to(dtype=dtype or stored)

    def close(self) -> None:
        self.weights.close()
        super().close()

    def __repr__(self) -> str:
        return f"AdapterReader({str(self.path)!r}, base={str(self.base_path)!r}, patched={len(self.patches)})"


def open_model(path: str | Path, allow_pickle: bool = False, adapter_base: str | Path | None = None
               ) -> CheckpointReader:
    """A reader for a model folder or a peft LoRA adapter folder (its base from adapter_config.json or
    ``adapter_base``)."""
    if is_adapter_folder(path):
        return AdapterReader(path, allow_pickle=allow_pickle, adapter_base=adapter_base)
    return CheckpointReader(path, allow_pickle=allow_pickle)


def apply_adapter(model: Any, reader: AdapterReader) -> None:
    """Overwrite the adapted parameters of an in-memory model (loaded from the base) with the reader's tensors."""
    state = model.state_dict(keep_vars=True)
    index = NameIndex(state)
    for name in reader.patches:
        runtime = index.find(name)
        if runtime is None:
            raise CMAAMError(f"{reader.path}: the loaded model has no parameter for {name!r}")
        parameter = state[runtime]
        with torch.no_grad():
            parameter.copy_(reader.get(name, device=parameter.device, dtype=parameter.dtype))

