"""Cost of the CMAAM analysis pass against a plain linear merge of the same pair (target: <= 2x).

    python bench/analysis_cost.py --hidden-size 1024 --layers 8 --vision-hidden-size 512 --vision-layers 8

Builds a synthetic Qwen2-VL pair of the given size (random target, seeded perturbation as source), drops
it from the page cache and reads it back (pages read from storage, as users' checkpoints, not the pages
their writer left), then times (min over --repeats, page cache warm) the analysis pass alone, a plain linear merge
through the engine, and the full ``merge_vlm`` (analysis + alphas + merge).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from benchtools import evict, warm, weight_files


def timed(function, repeats: int) -> tuple[float, float]:
    """Smallest wall time and smallest process CPU time of ``repeats`` calls, in seconds.

    CPU time (all threads) is the steadier figure on a shared machine; wall time is what users wait.
    """
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        function()
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden-size", type=int, default=1024)
    parser.add_argument("--intermediate-size", type=int, default=2816)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vision-hidden-size", type=int, default=512)
    parser.add_argument("--vision-layers", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--workdir", default=None, help="where the pair is built (default: a temp folder)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cmaam.alignment.alphas import AlphaConfig, compute_alphas
    from cmaam.io import CheckpointReader
    from cmaam.merging.executor import run_merge
    from cmaam.alignment.merge import merge_vlm
    from cmaam.merging.pairs import pair_jobs
    from cmaam.alignment.scores.analyzer import analyze_pair
    from cmaam.core.options import ExecutionOptions
    from cmaam.testing.tiny import TinySize, build_tiny_vlm, perturb_model

    root = Path(args.workdir or tempfile.mkdtemp(prefix="cmaam_bench_"))
    size = TinySize(hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
                    num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden_size // 64),
                    num_key_value_heads=max(1, args.hidden_size // 256), vision_hidden_size=args.vision_hidden_size,
                    vision_layers=args.vision_layers, vision_heads=max(1, args.vision_hidden_size // 64))
    target = root / "target"
    source = root / "source"
    if not target.exists():
        build_tiny_vlm(target, "qwen2_vl", seed=0, size=size)
    if not source.exists():
        perturb_model(target, source, scale=0.05, seed=1)
    inputs = weight_files([target, source])
    evict(inputs)  # then read back: pages read from storage, as users' checkpoints (docs/performance.md)
    warm(inputs)
    readers = {"target": CheckpointReader(target), "source": CheckpointReader(source)}
    names = readers["target"].keys()
    parameters = sum(readers["target"].numel(n) for n in names)
    size_mb = sum((target / f).stat().st_size for f in ["model.safetensors"] if (target / f).exists()) / 1e6
    print(f"pair: {parameters / 1e6:.1f}M parameters, {len(names)} tensors, {size_mb:.0f} MB per model "
          f"(threads {torch.get_num_threads()}, device {args.device})")

    options = ExecutionOptions(device=args.device, overwrite=True, progress=False)

    def analysis():
        options = ExecutionOptions(device=args.device, progress=False)
        return compute_alphas(analyze_pair(readers["source"], readers["target"], options),
                              AlphaConfig("layerwise"))

    def linear_merge():
        run_merge(readers, pair_jobs(readers["target"], dict.fromkeys(names, 0.5), "linear"), root / "linear",
                  options, reference=target)

    def full_merge():
        merge_vlm(source, target, root / "cmaam", AlphaConfig("layerwise"), options, print_summary=False)

    linear_merge()  # warm the page cache
    merge_wall, merge_cpu = timed(linear_merge, args.repeats)
    analysis_wall, analysis_cpu = timed(analysis, args.repeats)
    full_wall, full_cpu = timed(full_merge, args.repeats)
    ratio = analysis_wall / merge_wall
    print(f"plain linear merge : {merge_wall:8.3f} s wall {merge_cpu:8.3f} s cpu")
    print(f"analysis pass      : {analysis_wall:8.3f} s wall {analysis_cpu:8.3f} s cpu  "
          f"({ratio:.2f}x the merge wall, {analysis_cpu / merge_cpu:.2f}x cpu; target <= 2x: "
          f"{'met' if ratio <= 2 else 'NOT met'})")
    print(f"cmaam.alignment.merge total  : {full_wall:8.3f} s wall {full_cpu:8.3f} s cpu  (analysis + alphas + merge)")
    if args.workdir is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
