"""Real scale: a Qwen2-VL-7B-shaped pair on this machine: CMAAM full merge, linear merges, sweep, the I/O floor.

    python bench/real_scale.py [--shape qwen2_vl_7b] [--sweep-shape qwen2_vl_2b] [--workdir DIR] [--keep]

Writes a target and a fine-tune-like source with the real Qwen2-VL dimensions in bfloat16, shard by shard
and row block by row block (never a whole model, nor a whole embedding, in memory): random weights for the
target; the source adds low-rank deltas to every linear layer of the language model (lm_head included) and
a small change to the token embeddings, and keeps the vision tower. config.json is written like the real
one (flat, transformers 4 style). Then, one after another, on the same pair, each in a fresh process with
the inputs evicted from the page cache first, each output deleted before the next:

- ``cmaam.merge --strategy full --analyze``
- ``cmaam.mergekit`` linear (0.5/0.5)
- ``mergekit-yaml`` linear, same YAML, through a one-function compatibility shim (below)
- ``cmaam.sweep`` 0.3/0.5/0.7 on the ``--sweep-shape`` pair (its three outputs fit on the disk)

and the I/O floor measured in the same run: read both inputs once + write one output-sized file with fsync,
no compute. The table shows wall seconds, the ratio to the floor, peak RSS, bytes read from and written to
storage (/proc/<pid>/io read_bytes, write_bytes) and bytes read through read calls (rchar). The pairs
need about 3 model sizes of free disk (about 50 GB for the 7B shape); the script refuses to start
otherwise. The checkpoints are deleted at the end unless --keep.

mergekit 0.1.5 under transformers 5 cannot plan Qwen2-VL (``Qwen2VLConfig`` has no attribute
``num_hidden_layers``: transformers 5 moves it under ``text_config``). The shim below makes its
``get_config_value`` look there too; it is used only by this benchmark, never by cmaam.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchtools import evict, folder_bytes, io_floor, measure, weight_files

ROW_BLOCK_ELEMENTS = 1 << 25  # rows generated at a time (128 MiB as float32)
SEED = 0


@dataclass(frozen=True)
class VLShape:
    """The dimensions of a Qwen2-VL checkpoint (real values for the named shapes)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    vision_depth: int = 32
    vision_embed_dim: int = 1280
    vision_heads: int = 16
    vision_mlp_ratio: int = 4
    spatial_merge_size: int = 2
    patch_size: int = 14
    temporal_patch_size: int = 2

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every tensor's name and shape, as in the real checkpoint."""
        h, kv = self.hidden_size, self.hidden_size // self.num_attention_heads * self.num_key_value_heads
        inter, v = self.intermediate_size, self.vision_embed_dim
        merged = v * self.spatial_merge_size ** 2
        names: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab_size, h)),
                                                    ("model.norm.weight", (h,))]
        for layer in range(self.num_hidden_layers):
            prefix = f"model.layers.{layer}."
            names += [(prefix + "input_layernorm.weight", (h,)), (prefix + "post_attention_layernorm.weight", (h,)),
                      (prefix + "self_attn.q_proj.weight", (h, h)), (prefix + "self_attn.q_proj.bias", (h,)),
                      (prefix + "self_attn.k_proj.weight", (kv, h)), (prefix + "self_attn.k_proj.bias", (kv,)),
                      (prefix + "self_attn.v_proj.weight", (kv, h)), (prefix + "self_attn.v_proj.bias", (kv,)),
                      (prefix + "self_attn.o_proj.weight", (h, h)), (prefix + "mlp.gate_proj.weight", (inter, h)),
                      (prefix + "mlp.up_proj.weight", (inter, h)), (prefix + "mlp.down_proj.weight", (h, inter))]
        if not self.tie_word_embeddings:
            names.append(("lm_head.weight", (self.vocab_size, h)))
        names += [("visual.patch_embed.proj.weight", (v, 3, self.temporal_patch_size, self.patch_size,
                                                      self.patch_size)),
                  ("visual.merger.ln_q.weight", (v,)), ("visual.merger.ln_q.bias", (v,)),
                  ("visual.merger.mlp.0.weight", (merged, merged)), ("visual.merger.mlp.0.bias", (merged,)),
                  ("visual.merger.mlp.2.weight", (h, merged)), ("visual.merger.mlp.2.bias", (h,))]
        mlp = v * self.vision_mlp_ratio
        for block in range(self.vision_depth):
            prefix = f"visual.blocks.{block}."
            names += [(prefix + "norm1.weight", (v,)), (prefix + "norm1.bias", (v,)), (prefix + "norm2.weight", (v,)),
                      (prefix + "norm2.bias", (v,)), (prefix + "attn.qkv.weight", (3 * v, v)),
                      (prefix + "attn.qkv.bias", (3 * v,)), (prefix + "attn.proj.weight", (v, v)),
                      (prefix + "attn.proj.bias", (v,)), (prefix + "mlp.fc1.weight", (mlp, v)),
                      (prefix + "mlp.fc1.bias", (mlp,)), (prefix + "mlp.fc2.weight", (v, mlp)),
                      (prefix + "mlp.fc2.bias", (v,))]
        return sorted(names)  # safetensors files hold their tensors sorted by name

    def nbytes(self, element_size: int = 2) -> int:
        return sum(math.prod(shape) for _, shape in self.tensors()) * element_size

    def config(self) -> dict:
        """config.json as the released checkpoints have it (transformers 4 layout: text settings at the top)."""
        return {
            "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
            "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
            "vision_start_token_id": 151652, "vision_end_token_id": 151653, "vision_token_id": 151654,
            "image_token_id": 151655, "video_token_id": 151656, "hidden_act": "silu",
            "hidden_size": self.hidden_size, "initializer_range": 0.02, "intermediate_size": self.intermediate_size,
            "max_position_embeddings": 32768, "max_window_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
            "sliding_window": 32768, "tie_word_embeddings": self.tie_word_embeddings, "torch_dtype": "bfloat16",
            "transformers_version": "4.41.2", "use_cache": True, "use_sliding_window": False,
            "vision_config": {"depth": self.vision_depth, "embed_dim": self.vision_embed_dim,
                              "mlp_ratio": self.vision_mlp_ratio, "num_heads": self.vision_heads, "in_chans": 3,
                              "hidden_size": self.hidden_size, "patch_size": self.patch_size,
                              "spatial_merge_size": self.spatial_merge_size, "spatial_patch_size": self.patch_size,
                              "temporal_patch_size": self.temporal_patch_size},
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "vocab_size": self.vocab_size,
        }


SHAPES = {
    "qwen2_vl_7b": VLShape(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                           num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
    "qwen2_vl_2b": VLShape(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                           num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    # for the tests: the same layout, tiny
    "tiny": VLShape(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=4000, tie_word_embeddings=False, vision_depth=2,
                    vision_embed_dim=32, vision_heads=4, vision_mlp_ratio=2),
}
LOW_RANK = 8  # rank of the source's deltas on the language model's linear layers
DELTA = 0.01  # their size relative to the weights
EMBEDDING_CHANGE = 0.005  # the source's change to the token embeddings, relative


def _is_norm(name: str) -> bool:
    module = name.rsplit(".", 2)[-2]
    return name.endswith(".weight") and ("norm" in module or module == "ln_q")


def _is_language_linear(name: str) -> bool:
    return (name.startswith("model.layers.") and name.endswith("proj.weight")) or name == "lm_head.weight"


def build_pair(folder: Path, shape: VLShape, seed: int = SEED) -> tuple[Path, Path]:
    """Write ``target`` and ``source`` under ``folder`` (bfloat16), row block by row block.

    A pair already there (from ``--keep``) is reused: each model is written atomically, so it is complete.
    """
    if (folder / "target" / "config.json").exists() and (folder / "source" / "config.json").exists():
        print(f"reusing the pair in {folder}", flush=True)
        return folder / "target", folder / "source"
    import torch
    from tqdm import tqdm

    from cmaam.io import CheckpointWriter, TensorSpec

    tensors = shape.tensors()
    specs = [TensorSpec(name, dims, torch.bfloat16) for name, dims in tensors]
    target, source = folder / "target", folder / "source"
    generator = torch.Generator().manual_seed(seed)
    with CheckpointWriter(target, specs, config=shape.config(), max_shard_size="4GB") as target_writer, \
            CheckpointWriter(source, specs, config=shape.config(), max_shard_size="4GB") as source_writer:
        for name, dims in tqdm(tensors, desc=f"writing the pair to {folder}", unit="tensor"):
            rows, width = dims[0], math.prod(dims[1:])
            low_rank = None
            if _is_language_linear(name):
                scale = DELTA * 0.02 / math.sqrt(LOW_RANK)
                low_rank = (torch.randn(rows, LOW_RANK, generator=generator) * scale,
                            torch.randn(LOW_RANK, width, generator=generator))
            step = max(1, ROW_BLOCK_ELEMENTS // width)
            for start in range(0, rows, step):
                count = min(step, rows - start)
                block_shape = (count, *dims[1:])
                if _is_norm(name):
                    weights = 1.0 + 0.05 * torch.randn(block_shape, generator=generator)
                elif name.endswith(".bias"):
                    weights = 0.01 * torch.randn(block_shape, generator=generator)
                else:
                    weights = 0.02 * torch.randn(block_shape, generator=generator)
                target_writer.add_rows(name, start, weights)
                if low_rank is not None:
                    weights += (low_rank[0][start:start + count] @ low_rank[1]).reshape(block_shape)
                elif name == "model.embed_tokens.weight":
                    weights += EMBEDDING_CHANGE * 0.02 * torch.randn(block_shape, generator=generator)
                source_writer.add_rows(name, start, weights)
                del weights
    return target, source


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def check_disk(folder: Path, shape_name: str, models: int) -> None:
    """Refuse (exit 2, one line) unless ``models`` model sizes + 2 GB fit on the disk of ``folder``."""
    need = SHAPES[shape_name].nbytes() * models + 2 * 10**9
    free = free_bytes(folder)
    if free < need:
        sys.stderr.write(f"error: {shape_name} needs about {need / 1e9:.0f} GB free in {folder} ({models} checkpoints "
                         f"of {SHAPES[shape_name].nbytes() / 1e9:.1f} GB + 2 GB); {free / 1e9:.0f} GB are free. "
                         "Free some space, pass --workdir on a larger disk, or use a smaller --shape.\n")
        raise SystemExit(2)


MERGEKIT_SHIM = """
import sys
import mergekit.common as common
_original = common.get_config_value
def get_config_value(config, path):
    # transformers 5 keeps Qwen2-VL's text settings under text_config; mergekit 0.1.5 looks at the top only
    try:
        return _original(config, path)
    except Exception:
        text = getattr(config, "text_config", None)
        if text is None:
            raise
        return _original(text, path)
common.get_config_value = get_config_value
for module in list(sys.modules.values()):
    if getattr(module, "get_config_value", None) is _original:
        module.get_config_value = get_config_value
from mergekit.scripts.run_yaml import main
sys.argv = ["mergekit-yaml", *sys.argv[1:]]
main()
"""


def linear_yaml(folder: Path, target: Path, source: Path) -> Path:
    path = folder / "linear.yaml"
    path.write_text(f"merge_method: linear\ndtype: bfloat16\nmodels:\n  - model: {target}\n    parameters: "
                    f"{{weight: 0.5}}\n  - model: {source}\n    parameters: {{weight: 0.5}}\n")
    return path


def run(label: str, command: list[str], inputs: list[Path], outputs: list[Path]) -> dict:
    """Measure one command from a cold page cache (its inputs evicted), then delete its outputs."""
    for output in outputs:
        shutil.rmtree(output, ignore_errors=True)
    evict(weight_files(inputs))
    print(f"running {label} ...", flush=True)
    result = measure(command)
    for output in outputs:
        shutil.rmtree(output, ignore_errors=True)
    result["label"] = label
    print(f"  {result['seconds']:.1f} s, peak RSS {result['peak_rss_mb'] / 1024:.2f} GB", flush=True)
    return result


def floor_row(label: str, inputs: list[Path], scratch: Path) -> dict:
    evict(weight_files(inputs))
    print(f"measuring {label} ...", flush=True)
    result = io_floor(weight_files(inputs), folder_bytes(inputs[0]), scratch)
    result["label"] = label
    return result


def table(rows: list[dict]) -> str:
    header = (f"| {'run':<58} | {'seconds':>7} | {'x floor':>7} | {'peak RSS GB':>11} | {'read GB':>7} | "
              f"{'written GB':>10} | {'rchar GB':>8} |")
    lines = [header, "|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|"]
    for row in rows:
        floor = row.get("floor")
        ratio = f"{row['seconds'] / floor:.2f}" if floor else ""
        lines.append(f"| {row['label']:<58} | {row['seconds']:>7.1f} | {ratio:>7} | {row['peak_rss_mb'] / 1024:>11.2f} "
                     f"| {row.get('read_bytes', 0) / 1e9:>7.2f} | {row.get('write_bytes', 0) / 1e9:>10.2f} "
                     f"| {row.get('rchar', 0) / 1e9:>8.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen2_vl_7b", choices=sorted(SHAPES), help="the pair merged (default 7B)")
    parser.add_argument("--sweep-shape", default="qwen2_vl_2b", choices=sorted(SHAPES),
                        help="the pair swept with 3 alphas (default 2B: three outputs fit on the disk)")
    parser.add_argument("--workdir", default=None, help="where the pairs are written (default: a temporary folder "
                                                        "under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints (they are large)")
    parser.add_argument("--max-memory", default=None, help="passed to the cmaam commands (default: theirs)")
    parser.add_argument("--skip-mergekit", action="store_true", help="leave out the mergekit-yaml run")
    parser.add_argument("--skip-sweep", action="store_true", help="leave out the sweep")
    parser.add_argument("--build-only", action="store_true",
                        help="write the --shape pair to WORKDIR/<shape> and stop (implies --keep)")
    args = parser.parse_args()
    args.keep |= args.build_only

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cmaam_real_scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    check_disk(workdir, args.shape, 3)
    python = sys.executable
    memory = ["--max-memory", args.max_memory] if args.max_memory else []
    mergekit = [python, "-c", MERGEKIT_SHIM]
    rows = []
    try:
        folder = workdir / args.shape
        target, source = build_pair(folder, SHAPES[args.shape])
        if args.build_only:
            print(f"wrote {target} and {source}")
            return
        pair = [target, source]
        floor = floor_row(f"I/O floor {args.shape}: read both inputs, write one (fsync)", pair, workdir)
        rows.append(floor)
        output = workdir / "merged"
        config = linear_yaml(workdir, target, source)
        runs = [
            ("cmaam.merge --strategy full --analyze", [python, "-m", "cmaam.merge", "--source", str(source),
                                                       "--target", str(target), "--output", str(output),
                                                       "--strategy", "full", "--analyze", "--no-progress", *memory]),
            ("cmaam.mergekit linear", [python, "-m", "cmaam.mergekit", str(config), str(output), "--no-progress",
                                       *memory]),
        ]
        if not args.skip_mergekit:
            runs.append(("mergekit-yaml linear (transformers-5 shim)", [*mergekit, str(config), str(output),
                                                                          "--quiet"]))
        for label, command in runs:
            row = run(f"{args.shape}: {label}", command, pair, [output])
            row["floor"] = floor["seconds"]
            rows.append(row)
        if not args.skip_sweep:
            if args.sweep_shape != args.shape:
                shutil.rmtree(folder)
                check_disk(workdir, args.sweep_shape, 5)
                folder = workdir / args.sweep_shape
                target, source = build_pair(folder, SHAPES[args.sweep_shape])
                pair = [target, source]
                floor = floor_row(f"I/O floor {args.sweep_shape}: read both inputs, write one (fsync)", pair,
                                  workdir)
                rows.append(floor)
            sweep_dir = workdir / "sweep"
            row = run(f"{args.sweep_shape}: cmaam.sweep 0.3,0.5,0.7 (3 outputs)",
                      [python, "-m", "cmaam.sweep", "--source", str(source), "--target", str(target),
                       "--alphas", "0.3,0.5,0.7", "--output-dir", str(sweep_dir), "--no-progress", *memory],
                      pair, [sweep_dir])
            row["floor"] = floor["seconds"]
            rows.append(row)
        print()
        print(f"{args.shape}: {SHAPES[args.shape].nbytes() / 1e9:.1f} GB per model (bfloat16); every run in a "
              "fresh process, inputs evicted from the page cache first; 'x floor' = seconds / the I/O floor of "
              "its pair; read/written GB from /proc/<pid>/io (storage), rchar = bytes through read calls")
        print(table(rows))
        print(json.dumps(rows))
    finally:
        if not args.keep:
            for name in (args.shape, args.sweep_shape, "merged", "sweep"):
                shutil.rmtree(workdir / name, ignore_errors=True)
            (workdir / "linear.yaml").unlink(missing_ok=True)
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
