"""The reliability suite's inputs, built once per session: tiny models, their broken variants and small data sets.

Faulty models are copies of the tiny ones with exactly one thing wrong (NaN, a reshaped or missing
tensor, a truncated shard, a pickle, a bad index, ...). Cases that could damage their inputs copy
them first (``Workspace.copy``), so one misbehaving CLI cannot spoil the other cases.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from reliability.harness import write_sitecustomize


class MaliciousPayload:
    """Unpickling this object calls ``open(marker, "w")``: the marker file appears iff the pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def save_malicious_pickle(path: Path, marker: Path) -> Path:
    """A ``torch.save`` file whose unpickling (weights_only=False) creates ``marker``."""
    import torch

    torch.save({"model.embed_tokens.weight": torch.zeros(2, 2), "payload": MaliciousPayload(marker)}, path)
    return path


def load_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def save_tensors(folder: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


@dataclass
class Workspace:
    """Session-wide inputs (never written by a case unless copied first)."""

    root: Path
    llama: Path
    llama_ft: Path
    qwen: Path
    qwen_ft: Path
    sitecustomize: Path
    vqa_data: Path
    corpus: Path

    def copy(self, source: Path, destination: Path) -> Path:
        """A private copy of an input (folders recursively)."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination)
        else:
            shutil.copy2(source, destination)
        return destination

    # -- one-fault variants, built on demand into the case's own folder ------------------------------
    def variant(self, source: Path, destination: Path, change) -> Path:
        """Copy ``source`` and apply ``change(tensors) -> tensors`` to its model.safetensors."""
        self.copy(source, destination)
        save_tensors(destination, change(load_tensors(destination)))
        return destination

    def with_nan(self, source: Path, destination: Path) -> Path:
        def change(tensors):
            name = next(n for n in tensors if n.endswith("mlp.up_proj.weight"))
            tensors[name] = tensors[name].clone()
            tensors[name][0, 0] = float("nan")
            return tensors
        return self.variant(source, destination, change)

    def reshaped(self, source: Path, destination: Path) -> Path:
        def change(tensors):
            name = next(n for n in tensors if n.endswith("mlp.up_proj.weight"))
            tensors[name] = tensors[name][:-1].clone()
            return tensors
        return self.variant(source, destination, change)

    def without_tensor(self, source: Path, destination: Path, suffix: str = "mlp.down_proj.weight") -> Path:
        def change(tensors):
            name = next(n for n in tensors if n.endswith(suffix))
            return {key: value for key, value in tensors.items() if key != name}
        return self.variant(source, destination, change)

    def with_config(self, source: Path, destination: Path, text: str) -> Path:
        self.copy(source, destination)
        (destination / "config.json").write_text(text, encoding="utf-8")
        return destination

    def with_model_type(self, source: Path, destination: Path, model_type: str) -> Path:
        """config.json names ``model_type`` and an architecture class of the same made-up name."""
        config = json.loads((source / "config.json").read_text(encoding="utf-8"))
        config["model_type"] = model_type
        config["architectures"] = [model_type.title().replace("_", "") + "ForConditionalGeneration"]
        return self.with_config(source, destination, json.dumps(config, indent=2))

    def truncated(self, source: Path, destination: Path) -> Path:
        self.copy(source, destination)
        weights = destination / "model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
        return destination

    def corrupt(self, source: Path, destination: Path) -> Path:
        """model.safetensors replaced by bytes that are not a safetensors file."""
        self.copy(source, destination)
        (destination / "model.safetensors").write_bytes(b"\xff" * 8 + b"not a safetensors header" * 64)
        return destination

    def without_weights(self, source: Path, destination: Path) -> Path:
        self.copy(source, destination)
        (destination / "model.safetensors").unlink()
        return destination

    def pickled(self, source: Path, destination: Path) -> Path:
        """The model saved as pytorch_model.bin (a plain state-dict pickle) instead of safetensors."""
        import torch

        self.copy(source, destination)
        tensors = load_tensors(destination)
        (destination / "model.safetensors").unlink()
        torch.save(tensors, destination / "pytorch_model.bin")
        return destination

    def malicious(self, source: Path, destination: Path, marker: Path) -> Path:
        """A model folder whose only weights file is a pickle that creates ``marker`` when executed."""
        self.copy(source, destination)
        (destination / "model.safetensors").unlink()
        save_malicious_pickle(destination / "pytorch_model.bin", marker)
        return destination

    def indexed(self, source: Path, destination: Path, weight_map: dict, keep_weights: bool = False) -> Path:
        """A copy of ``source`` reached through a model.safetensors.index.json holding ``weight_map``."""
        self.copy(source, destination)
        if not keep_weights:
            (destination / "model.safetensors").unlink(missing_ok=True)
        index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
        (destination / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
        return destination

    def tensor_names(self, source: Path) -> list[str]:
        return list(load_tensors(source))


def _image(path: Path, colour: tuple[int, int, int]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (56, 56), colour).save(path)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def build_vqa_data(folder: Path) -> Path:
    """A VQA folder (train/val/test.jsonl + images/) of four English questions."""
    rows = []
    for index, (colour, name) in enumerate([((255, 0, 0), "red"), ((0, 0, 255), "blue"), ((0, 160, 0), "green"),
                                            ((255, 255, 0), "yellow")]):
        _image(folder / "images" / f"{index}.png", colour)
        rows.append({"id": f"q{index}", "image": f"images/{index}.png", "question": "What colour is the image?",
                     "answer": name, "category": "colour", "lang": "en"})
    for split in ("train", "val", "test"):
        write_jsonl(folder / f"{split}.jsonl", rows)
    return folder


def build_corpus(folder: Path) -> Path:
    """A Korean VQA corpus (flat JSONL, one category) of six rows with real images."""
    rows = []
    for index in range(6):
        _image(folder / "images" / f"{index:02d}.png", (index * 40, 100, 200 - index * 30))
        rows.append({"image": f"images/{index:02d}.png", "question": f"그림 {index}의 색은?", "answer": f"색 {index}"})
    write_jsonl(folder / "general.jsonl", rows)
    return folder


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Workspace:
    """Tiny Llama and Qwen2-VL pairs (base + seeded perturbation), a VQA folder, a corpus, the slowing hook."""
    from cmaam.testing.tiny import build_tiny_causal_lm, build_tiny_vlm, perturb_model

    root = tmp_path_factory.mktemp("reliability")
    with contextlib.redirect_stderr(io.StringIO()):  # transformers' "Writing model shards" bars
        llama = build_tiny_causal_lm(root / "models" / "llama", "llama", seed=0)
        qwen = build_tiny_vlm(root / "models" / "qwen2vl", "qwen2_vl", seed=0)
        llama_ft = perturb_model(llama, root / "models" / "llama_ft", 0.05, seed=1)
        qwen_ft = perturb_model(qwen, root / "models" / "qwen2vl_ft", 0.05, seed=1)
    return Workspace(root=root, llama=llama, llama_ft=llama_ft, qwen=qwen, qwen_ft=qwen_ft,
                     sitecustomize=write_sitecustomize(root / "hooks"), vqa_data=build_vqa_data(root / "vqa"),
                     corpus=build_corpus(root / "corpus"))


@pytest.fixture
def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def small_disk(tmp_path, request):
    """``small_disk(name, read_only=False)`` -> (folder, "") with a 256 KiB tmpfs mounted there (unmounted
    after the test), or (None, reason) where mounting is not permitted."""

    def mount(name: str, read_only: bool = False, size: str = "256k") -> tuple[Path | None, str]:
        folder = tmp_path / name
        folder.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                                 text=True)
        if mounted.returncode != 0:
            return None, f"cannot mount a tmpfs here ({(mounted.stderr or mounted.stdout).strip()})"
        request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(folder)], capture_output=True))
        return folder, ""

    return mount
