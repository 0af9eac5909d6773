"""Population evaluation: the sequential evaluator's order and errors; Ray actors give the same fitness."""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from cmaam.core.errors import CMAAMError
from cmaam.search.fitness import FitnessConfig, build_fitness
from cmaam.search.genome import GenomeSpec
from cmaam.search.parallel import SequentialEvaluator, _first_line, make_evaluator

REPOSITORY = Path(__file__).resolve().parents[2]
GENOME = GenomeSpec(method="slerp", granularity="layer")
TARGET = [0.2, 0.8, 0.35, 0.65, 0.5]  # lm_head, embed_tokens, layer 0, layer 1, norm
JOBS = [(3, [0.5] * 5), (0, TARGET), (7, [0.1, 0.9, 0.1, 0.9, 0.1]), (1, [0.5] * 5)]
RAY_START_LIMIT = 30.0


@pytest.fixture(scope="module")
def spec(tiny_llama_pair):
    """A picklable fitness builder (what the search hands to its evaluators)."""
    base, other = tiny_llama_pair
    return functools.partial(build_fitness, FitnessConfig(type="synthetic", target=TARGET),
                             {"base": str(base), "other": str(other)}, "base", GENOME)


def test_sequential_evaluator_yields_each_job_in_order_with_its_fitness(spec):
    evaluator = SequentialEvaluator(spec)
    results = list(evaluator.map(JOBS))
    assert [index for index, _ in results] == [3, 0, 7, 1]
    fitness = spec()  # a fresh fitness scores each genome the same
    assert [evaluation.fitness for _, evaluation in results] == [fitness(genome).fitness for _, genome in JOBS]
    assert results[1][1].fitness == 0.0 and results[0][1].fitness < 0  # 0 exactly at the target genome
    assert results[0][1].fitness == results[3][1].fitness  # the same genome, the same fitness
    evaluator.close()
    assert evaluator.fitness is None


def test_worker_count_below_one_is_refused(spec):
    with pytest.raises(CMAAMError, match="--workers must be at least 1, got 0"):
        make_evaluator(spec, workers=0)


def test_without_ray_several_workers_fall_back_to_sequential(spec, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with caplog.at_level(logging.WARNING, logger="cmaam.search.parallel"):
        evaluator = make_evaluator(spec, workers=3)
    assert isinstance(evaluator, SequentialEvaluator)
    assert caplog.messages == ["Ray is not installed; evaluating 3 workers' share sequentially"]
    with pytest.raises(CMAAMError, match=r"--ray-address needs Ray \(pip install 'cmaam\[ray\]'\)"):
        make_evaluator(spec, workers=2, address="10.0.0.1:6379")


@pytest.mark.parametrize("message, expected", [
    ("Traceback (most recent call last):\n  File 'x.py'\nray.exceptions.RayTaskError: wrapped\n"
     "ValueError: the real cause\n", "ValueError: the real cause"),
    ("\n  worker died unexpectedly  \nmore\n", "worker died unexpectedly"),
    ("", "RuntimeError"),
    ("KeyError: " + "k" * 400, "KeyError: " + "k" * 290),
])
def test_a_worker_failure_is_reported_by_its_last_error_line(message, expected):
    assert _first_line(RuntimeError(message)) == expected


RAY_SCRIPT = textwrap.dedent('''
    import json, sys, time
    import ray
    from cmaam.core.errors import CMAAMError
    import functools
    from cmaam.search.fitness import FitnessConfig, build_fitness
    from cmaam.search.genome import GenomeSpec
    from cmaam.search.parallel import RayEvaluator

    started = time.monotonic()
    ray.init(num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
    print("ray-started", round(time.monotonic() - started, 1), flush=True)
    base, other, jobs, target = json.loads(sys.argv[1])
    models, genome = {"base": base, "other": other}, GenomeSpec(method="slerp", granularity="layer")
    spec = functools.partial(build_fitness, FitnessConfig(type="synthetic", target=target), models, "base", genome)
    evaluator = RayEvaluator(spec, workers=1)
    results = [[index, evaluation.fitness] for index, evaluation in evaluator.map([tuple(j) for j in jobs])]
    evaluator.actors = []  # keep Ray running for the failing case below
    broken = RayEvaluator(functools.partial(build_fitness, FitnessConfig(type="synthetic"), models, "base", genome),
                          workers=1)
    try:
        list(broken.map([(0, target)]))
        failure = None
    except CMAAMError as error:
        failure = str(error)
    broken.close()
    print("result", json.dumps({"results": results, "failure": failure}), flush=True)
''')


def test_ray_evaluator_on_a_local_one_cpu_ray_gives_the_sequential_fitness(spec, tmp_path):
    pytest.importorskip("ray")
    script = tmp_path / "ray_probe.py"
    script.write_text(RAY_SCRIPT)
    argument = json.dumps([spec.args[1]["base"], spec.args[1]["other"], JOBS, TARGET])
    environment = dict(os.environ, PYTHONPATH=str(REPOSITORY), RAY_DEDUP_LOGS="0", CMAAM_DEBUG="")
    process = subprocess.Popen([sys.executable, str(script), argument], cwd=tmp_path, env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout] + [lines.put(None)],
                     daemon=True).start()

    def next_line(deadline: float) -> str | None:
        try:
            return lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    try:
        first = next_line(time.monotonic() + RAY_START_LIMIT)
        if first is None or not first.startswith("ray-started"):
            pytest.skip(f"a local Ray did not start within {RAY_START_LIMIT:.0f} s on this machine ({first!r})")
        line = next_line(time.monotonic() + 240)
        assert line is not None and line.startswith("result "), (line, process.stderr.read())
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
        process.wait()
    outcome = json.loads(line[len("result "):])
    reference = {index: evaluation.fitness for index, evaluation in SequentialEvaluator(spec).map(JOBS)}
    assert sorted(index for index, _ in outcome["results"]) == [0, 1, 3, 7]
    assert {index: fitness for index, fitness in outcome["results"]} == reference
    assert outcome["failure"].startswith("a Ray worker failed: ")
    assert "synthetic fitness needs a target genome" in outcome["failure"]
