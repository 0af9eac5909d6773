#!/usr/bin/env bash
# The GPU path, checked in one go on a machine with a CUDA GPU (under 5 minutes, nothing downloaded):
#   - merges on the GPU (--device cuda) equal the CPU's within float32 rounding: the alignment merge, mergekit
#     linear / TIES / task arithmetic / SLERP, a sweep, and row blocks under a small --max-memory
#   - the CMA-ES in-memory merge (cmaam.search.inmemory) on the GPU equals the CPU's
#   - a short bf16 LoRA run (2 optimizer steps) on the GPU: finite losses, adapter weights changed
# One line per check: PASS/FAIL/SKIP name: details. Exit code 1 if any check fails, 0 otherwise.
# Without a CUDA GPU every check is reported as SKIP (exit 0). GPU_CHECK_DEVICE=cpu runs the same checks with the
# CPU standing in for the GPU (a dry run of this script: every comparison is then exact).
#
#   scripts/gpu_check.sh            # on the GPU machine, from the repository root or anywhere
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
exec timeout 290 python - <<'PYTHON'
import contextlib
import io
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

logging.disable(logging.WARNING)
warnings.filterwarnings("ignore")
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
CHECKS = ["merges on the GPU equal the CPU", "CMA-ES in-memory merge on the GPU", "bf16 LoRA steps on the GPU"]
RELATIVE_TOLERANCE = 1e-5  # float32 compute: the GPU's kernels sum in another order
failures = 0

if DEVICE.startswith("cuda") and not torch.cuda.is_available():
    for name in CHECKS:
        print(f"SKIP {name}: no CUDA GPU (torch {torch.__version__}, CUDA build {torch.version.cuda})")
    sys.exit(0)

from cmaam.alignment.alphas.plan import AlphaConfig  # noqa: E402
from cmaam.alignment.merge import merge_vlm  # noqa: E402
from cmaam.core.options import ExecutionOptions  # noqa: E402
from cmaam.io import CheckpointReader  # noqa: E402
from cmaam.merging import executor  # noqa: E402
from cmaam.merging.config_merge import merge_from_config  # noqa: E402
from cmaam.merging.sweep import sweep  # noqa: E402
from cmaam.testing.tiny import build_tiny_causal_lm, build_tiny_vlm, perturb_model  # noqa: E402


def report(name: str, passed: bool, detail: str) -> None:
    global failures
    failures += not passed
    print(f"{'PASS' if passed else 'FAIL'} {name}: {detail}", flush=True)


def compare(first: dict, second: dict) -> tuple[bool, float, int]:
    """(every tensor within tolerance, the largest relative difference, tensors compared)."""
    worst, same_names = 0.0, set(first) == set(second)
    for name, tensor in first.items():
        other = second[name].to(tensor.device)
        if tensor.is_floating_point():
            scale = float(tensor.float().abs().max()) or 1.0
            worst = max(worst, float((tensor.float() - other.float()).abs().max()) / scale)
        elif not torch.equal(tensor, other):
            worst = float("inf")
    return same_names and worst <= RELATIVE_TOLERANCE, worst, len(first)


def tensors(folder: Path) -> dict:
    reader = CheckpointReader(folder)
    return {name: reader.get(name) for name in reader.keys()}


def check(name: str, run) -> None:
    try:
        start = time.perf_counter()
        detail = run()
        report(name, True, f"{detail} ({time.perf_counter() - start:.1f} s)")
    except AssertionError as error:
        report(name, False, str(error))
    except Exception as error:  # one line, and the next check still runs
        report(name, False, f"{type(error).__name__}: {error}")


def on_both(name: str, produce) -> str:
    """Run ``produce(device, folder)`` on the CPU and on DEVICE and compare the written tensors."""
    cpu, gpu = produce("cpu", work / f"{name}_cpu"), produce(DEVICE, work / f"{name}_gpu")
    passed, worst, count = compare(tensors(cpu), tensors(gpu))
    assert passed, f"{name}: largest relative difference {worst:.2e} > {RELATIVE_TOLERANCE:g}"
    return f"{count} tensors, max relative difference {worst:.1e}"


with tempfile.TemporaryDirectory(prefix="cmaam_gpu_check_") as folder:
    work = Path(folder)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # quiet builds
        vlm_target = build_tiny_vlm(work / "vlm_target", "qwen2_vl", seed=0)
        vlm_source = perturb_model(vlm_target, work / "vlm_source", scale=0.05, seed=1)
        base = build_tiny_causal_lm(work / "base", "llama", seed=0)
        ft1, ft2 = (perturb_model(base, work / f"ft{seed}", scale=0.1, seed=seed) for seed in (1, 2))
    options = lambda device, **more: ExecutionOptions(device=device, progress=False, **more)  # noqa: E731

    def merges() -> str:
        lines = []
        lines.append("alignment full " + on_both("alignment_full", lambda device, out: merge_vlm(
            vlm_source, vlm_target, out, AlphaConfig(strategy="full"), options(device), print_summary=False).output))
        configs = {
            "linear": f"merge_method: linear\nmodels:\n  - model: {base}\n    parameters: {{weight: 0.3}}\n"
                      f"  - model: {ft1}\n    parameters: {{weight: 0.7}}\n",
            "ties": f"merge_method: ties\nbase_model: {base}\nmodels:\n  - model: {ft1}\n    parameters: "
                    f"{{weight: 0.5, density: 0.5}}\n  - model: {ft2}\n    parameters: {{weight: 0.5, density: 0.3}}\n",
            "task_arithmetic": f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n  - model: {ft1}\n"
                               f"    parameters: {{weight: 0.5}}\n  - model: {ft2}\n    parameters: {{weight: 0.7}}\n",
            "slerp": f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {ft1}\n"
                     "parameters: {t: 0.3}\n",
        }
        for method, text in configs.items():
            config = work / f"{method}.yaml"
            config.write_text(text)
            lines.append(f"{method} " + on_both(method, lambda device, out: merge_from_config(
                config, out, options(device))))
        lines.append("sweep " + on_both("sweep", lambda device, out: sweep(
            ft1, base, out, "0.3", options(device))[0]))
        chunk = executor.COMPUTE_CHUNK_ELEMENTS
        executor.COMPUTE_CHUNK_ELEMENTS = 64  # the tiny matrices then span many row blocks
        try:
            lines.append("row blocks " + on_both("blocks", lambda device, out: merge_from_config(
                work / "linear.yaml", out, options(device, max_memory="4KB"))))
        finally:
            executor.COMPUTE_CHUNK_ELEMENTS = chunk
        return "; ".join(lines)

    def in_memory() -> str:
        from cmaam.search.genome import GenomeSpec
        from cmaam.search.inmemory import InMemoryMerger

        results = []
        for method in ("slerp", "ties"):
            spec = GenomeSpec(method=method, granularity="layer")
            mergers = [InMemoryMerger({"base": base, "ft1": ft1, "ft2": ft2} if method == "ties"
                                      else {"base": base, "ft1": ft1}, "base", spec, options(device, seed=3))
                       for device in ("cpu", DEVICE)]
            genome = [0.2 + 0.6 * index / max(1, len(mergers[0].layout) - 1) for index in range(len(mergers[0].layout))]
            for merger in mergers:
                merger.apply(genome)
            found = {str(next(merger.model.parameters()).device) for merger in mergers[1:]}
            assert all(d.startswith(DEVICE.split(":")[0]) for d in found), f"in-memory model on {found}, not {DEVICE}"
            passed, worst, count = compare(dict(mergers[0].state_items()), dict(mergers[1].state_items()))
            assert passed, f"{method}: largest relative difference {worst:.2e} > {RELATIVE_TOLERANCE:g}"
            results.append(f"{method} {count} tensors, max relative difference {worst:.1e}")
        return "; ".join(results)

    def lora() -> str:
        from finetune.lora_vqa import LoraTrainConfig, train
        from finetune.synthetic_vqa import SyntheticConfig, generate

        data = generate(SyntheticConfig(output=str(work / "vqa"), n=32, lang="en"), progress=False)
        if DEVICE.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        quiet = io.StringIO()  # the trainer's own logs and bars: one line per check is printed here
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            result = train(LoraTrainConfig(
                model=str(vlm_target), data=str(data), output=str(work / "lora"), results_root=str(work / "results"),
                bf16=DEVICE.startswith("cuda"), max_steps=2, batch_size=4, grad_accum=1, lr=5e-3, lora_rank=8,
                lora_alpha=16, lora_dropout=0.0, warmup=0, logging_steps=1, save_steps=100, eval_limit=0,
                wandb_mode="disabled", progress=False))
        losses = [entry["loss"] for entry in result.loss_history if "loss" in entry]
        assert result.global_step == 2 and losses and all(map(torch.isfinite, torch.tensor(losses))), \
            f"steps {result.global_step}, losses {losses}"
        peak = torch.cuda.max_memory_allocated() / 2**20 if DEVICE.startswith("cuda") else 0.0
        assert not DEVICE.startswith("cuda") or peak > 0, "nothing was allocated on the GPU"
        changed = tensors(result.merged)
        base_tensors = tensors(vlm_target)
        moved = sum(not torch.equal(changed[name].float(), base_tensors[name].float()) for name in base_tensors
                    if name in changed)
        assert moved, "no weight changed"
        return (f"{result.global_step} steps, losses {', '.join(f'{loss:.3f}' for loss in losses)}, "
                f"{moved} merged weights changed, peak GPU memory {peak:.0f} MiB")

    for name, run in zip(CHECKS, (merges, in_memory, lora)):
        check(name, run)
sys.exit(1 if failures else 0)
PYTHON
