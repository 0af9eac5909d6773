"""Cost of one CMA-ES candidate: seconds in the in-memory merge vs the MGSM evaluation, and bytes written.

    python bench/evolve_candidate_cost.py                      # two tiny llamas built in a temp folder, CPU
    python bench/evolve_candidate_cost.py --hidden 512 --layers 8 --device cuda
    python bench/evolve_candidate_cost.py --models /m/komt /m/wizardmath --device cuda --dtype bfloat16 --lang ja

Bytes are read from /proc/self/io around each candidate (wchar: every write() of the process,
write_bytes: what reached the block layer), so a checkpoint written per candidate would show up.
For comparison it also times writing the merged model once with cmaam.io (what a
write-then-reload loop would pay per candidate, before even loading it back).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path



def process_io() -> dict[str, int]:
    """wchar and write_bytes of this process (Linux)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {"wchar": int(fields["wchar"]), "write_bytes": int(fields["write_bytes"])}


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs=2, metavar=("BASE", "OTHER"), help="two model folders (default: build tiny)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size of the built tiny models")
    parser.add_argument("--layers", type=int, default=2, help="layers of the built tiny models")
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--lang", default="en")
    parser.add_argument("--limit", type=int, default=4, help="MGSM questions per candidate")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--method", default="slerp", choices=("slerp", "ties", "dare_ties", "task_arithmetic"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from cmaam.io import write_state_dict
    from cmaam.core.options import ExecutionOptions
    from cmaam.search.fitness import FitnessConfig, build_fitness
    from cmaam.search.genome import GenomeSpec
    from cmaam.testing.tiny import TinySize, build_tiny_causal_lm, perturb_model
    from eval.mgsm import load_mgsm

    work = Path(tempfile.mkdtemp(prefix="evolve_bench_"))
    if args.models:
        base, other = args.models
    else:
        size = TinySize(hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=4, num_key_value_heads=2)
        base = build_tiny_causal_lm(work / "base", "llama", seed=0, size=size)
        other = perturb_model(base, work / "other", 0.3, seed=1)
    config = FitnessConfig(lang=args.lang, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    options = ExecutionOptions(device=args.device, dtype=args.dtype, seed=args.seed)
    started = time.perf_counter()
    fitness = build_fitness(config, {"base": str(base), "other": str(other)}, "base", GenomeSpec(method=args.method),
                            options, items=load_mgsm(args.lang, lang=args.lang)[:args.limit])
    setup = time.perf_counter() - started
    layout = fitness.merger.layout
    parameters = sum(t.numel() for t in fitness.merger.targets.values())
    print(f"models: {base} + {other}; {parameters / 1e6:.2f}M parameters, {len(layout)} genes ({args.method}), "
          f"device {fitness.merger.device}; setup (inputs read once + model preallocated): {setup:.2f}s")
    generator = random.Random(args.seed)
    fitness([0.5] * len(layout))  # warm-up (first generate call)
    rows = []
    watched = folder_bytes(work)
    for _ in range(args.candidates):
        genome = [generator.uniform(low, high) for low, high in zip(*layout.bounds())]
        before = process_io()
        evaluation = fitness(genome)
        after = process_io()
        rows.append((evaluation.merge_seconds, evaluation.eval_seconds, after["wchar"] - before["wchar"],
                     after["write_bytes"] - before["write_bytes"]))
    print(f"{'candidate':>9} {'merge s':>9} {'eval s':>9} {'wchar B':>9} {'write_bytes B':>14}")
    for index, (merge, evaluate, wchar, written) in enumerate(rows):
        print(f"{index:>9} {merge:>9.4f} {evaluate:>9.3f} {wchar:>9} {written:>14}")
    merge = statistics.median(r[0] for r in rows)
    evaluate = statistics.median(r[1] for r in rows)
    print(f"median per candidate: merge {merge:.4f}s, evaluation {evaluate:.3f}s "
          f"({100 * merge / (merge + evaluate):.1f}% of the time in the merge); "
          f"bytes written per candidate: wchar max {max(r[2] for r in rows)}, "
          f"write_bytes max {max(r[3] for r in rows)}; "
          f"bench folder grew by {folder_bytes(work) - watched} bytes")
    started = time.perf_counter()
    saved = write_state_dict(work / "candidate_on_disk", fitness.merger.state_items(), reference=base)
    print(f"for comparison, writing one candidate as a checkpoint: {time.perf_counter() - started:.3f}s and "
          f"{folder_bytes(saved)} bytes (per candidate in a write-then-reload loop, before reloading it)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
