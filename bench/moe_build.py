"""MoE build time and peak memory: python -m cmaam.moe vs mergekit-moe on the same YAML and synthetic experts.

    python bench/moe_build.py --size-gb 1 [--gate-mode cheap_embed] [--dtype bfloat16] [--repeats 1]

Builds a Llama-shaped base and two experts of about ``--size-gb`` each (bench/merge_throughput.py's
synthetic checkpoints, plus the tiny byte-level tokenizer), then runs each side in a fresh subprocess
(wall seconds, peak RSS of the child), checks the two outputs hold the same tensors, and prints a table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from merge_throughput import (  # noqa: E402
    add_common_arguments, folder_bytes, run_sides, synthetic_inputs, work_folder)

CONFIG = """base_model: {base}
gate_mode: {gate_mode}
dtype: {dtype}
experts:
  - source_model: {ft1}
    positive_prompts: ["write a python function", "fix this bug"]
  - source_model: {ft2}
    positive_prompts: ["solve this equation", "what is 12 * 7?"]
"""


def largest_difference(ours: Path, theirs: Path) -> float:
    """Max abs difference over every tensor (the tensor names must match)."""
    from cmaam.io import CheckpointReader

    a, b = CheckpointReader(ours), CheckpointReader(theirs)
    if sorted(a.keys()) != sorted(b.keys()):
        raise SystemExit("error: the two outputs hold different tensors")
    return max((a.get(name).double() - b.get(name).double()).abs().max().item() for name in a.keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--gate-mode", default="cheap_embed", choices=("cheap_embed", "hidden", "random"))
    args = parser.parse_args()

    from cmaam.testing.tiny import build_tokenizer

    mergekit_moe = shutil.which("mergekit-moe") or str(Path(sys.executable).parent / "mergekit-moe")
    with work_folder(args, "cmaam_moe_bench_") as workdir:
        paths = synthetic_inputs(workdir, args.size_gb, args.dtype)
        build_tokenizer().save_pretrained(paths["base"])
        config = workdir / "moe.yaml"
        config.write_text(CONFIG.format(gate_mode=args.gate_mode, dtype=args.dtype,
                                        **{key: str(value) for key, value in paths.items()}))
        sides = {
            "cmaam": [sys.executable, "-m", "cmaam.moe", str(config), str(workdir / "out_cmaam"), "--no-progress",
                      "--overwrite"],
            "mergekit": [mergekit_moe, str(config), str(workdir / "out_mergekit"), "--quiet", "--random-seed", "0"],
        }
        results = run_sides(sides, paths, workdir, args.repeats)
        difference = largest_difference(workdir / "out_cmaam", workdir / "out_mergekit")
        model_gb = folder_bytes(paths["base"]) / 1e9
        output_gb = folder_bytes(workdir / "out_cmaam") / 1e9
        print(f"\n2 experts of {model_gb:.2f} GB ({args.dtype}), gate_mode {args.gate_mode}, output "
              f"{output_gb:.2f} GB, fresh process per side; max abs difference between the outputs: {difference:.3g}\n")
        header = f"{'side':<9} {'seconds':>8} {'peak RSS MB':>12} {'CPU s':>7}"
        print(header)
        print("-" * len(header))
        for side, run in results.items():
            print(f"{side:<9} {run['seconds']:>8.2f} {run['peak_rss_mb']:>12.0f} {run['cpu_seconds']:>7.2f}")
        print(f"{'ratio':<9} time x{results['cmaam']['seconds'] / results['mergekit']['seconds']:.2f}, "
              f"peak RSS x{results['cmaam']['peak_rss_mb'] / results['mergekit']['peak_rss_mb']:.2f} "
              "(cmaam / mergekit-moe)")


if __name__ == "__main__":
    main()
