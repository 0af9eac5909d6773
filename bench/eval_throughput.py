"""Evaluator throughput: answer extraction and VQA metrics per second, HF generation prompts/s by batch size.

Usage: python bench/eval_throughput.py [--model PATH] [--prompts 32] [--max-new-tokens 16]
Without --model a tiny random Llama is built in a temporary folder (CPU-sized numbers).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path


def rate(function, repeats: int) -> float:
    """Calls per second of ``function`` over ``repeats`` calls."""
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return repeats / (time.perf_counter() - start)


def main() -> None:
    from eval.generation import GenerationRequest, HFGenerator
    from eval.mgsm import extract_answer, load_mgsm
    from eval.vqa import anls, vqa_soft_accuracy

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    args = parser.parse_args()

    completions = [f"Step by step: {i} + {i} = {2 * i}. The answer is {item.answer:,.0f}."
                   for i, item in enumerate(load_mgsm("en"))]
    print(f"extract_answer: {rate(lambda: [extract_answer(c) for c in completions], 20) * len(completions):,.0f} "
          "completions/s")
    answers = ["two"] * 3 + ["2 dogs"] * 7
    print(f"vqa_soft_accuracy (10 answers): {rate(lambda: vqa_soft_accuracy('2', answers), 2000):,.0f} items/s")
    print(f"anls: {rate(lambda: anls('invoice number 2019', ['invoice no 2018', 'receipt']), 2000):,.0f} items/s")

    with tempfile.TemporaryDirectory() as folder:
        model = args.model
        if model is None:
            from cmaam.testing.tiny import build_tiny_causal_lm

            model = build_tiny_causal_lm(Path(folder) / "llama", "llama", seed=0)
        rng = random.Random(0)
        requests = [GenerationRequest("question " + "x" * rng.randint(10, 200)) for _ in range(args.prompts)]
        for batch_size in (1, 8, 32):
            generator = HFGenerator(model, batch_size=batch_size, max_new_tokens=args.max_new_tokens, progress=False)
            generator.generate(requests[:2])
            start = time.perf_counter()
            generator.generate(requests)
            seconds = time.perf_counter() - start
            print(f"HF generate, batch {batch_size:>2}: {len(requests) / seconds:7.1f} prompts/s "
                  f"({args.max_new_tokens} new tokens each)")


if __name__ == "__main__":
    main()
