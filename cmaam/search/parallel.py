"""Population evaluation: sequentially in this process, or on Ray actors that each hold their own inputs.

A genome's fitness depends only on the genome, so results do not depend on the number of workers
or on which worker scored which candidate.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Iterator, Sequence

from cmaam.core.errors import CMAAMError
from cmaam.search.fitness import Evaluation

logger = logging.getLogger(__name__)
Job = tuple[int, list[float]]  # (index in the population, genome)
# Builds a fitness (a callable genome -> Evaluation) in the process that calls it: picklable, e.g.
# functools.partial(cmaam.search.fitness.build_fitness, ...), so each Ray worker builds its own.
FitnessBuilder = Callable[[], Callable[[Sequence[float]], Evaluation]]


class SequentialEvaluator:
    """Scores candidates one after another with a single in-process fitness."""

    workers = 1

    def __init__(self, build: FitnessBuilder):
        self.fitness = build()

    def map(self, jobs: Sequence[Job], items: Sequence[int] | None = None) -> Iterator[tuple[int, Evaluation]]:
        """Yield (index, evaluation) for each job as it finishes (on ``items`` only, when given)."""
        for index, genome in jobs:
            yield index, self.fitness(genome) if items is None else self.fitness(genome, items=items)

    def close(self) -> None:
        self.fitness = None


class _Worker:
    """A Ray actor: builds its own fitness (its own copy of the inputs) once, then scores genomes."""

    def __init__(self, build: FitnessBuilder):
        self.fitness = build()

    def evaluate(self, genome: list[float], items: list[int] | None = None) -> Evaluation:
        return self.fitness(genome) if items is None else self.fitness(genome, items=items)


class RayEvaluator:
    """Scores candidates on ``workers`` Ray actors (a local Ray by default, a cluster with ``address``)."""

    def __init__(self, build: FitnessBuilder, workers: int, address: str | None = None, gpus_per_worker: float = 0.0,
                 cpus_per_worker: float = 1.0):
        import ray

        self.ray = ray
        self.workers = int(workers)
        if not ray.is_initialized():
            options = dict(include_dashboard=False, configure_logging=False, log_to_driver=True)
            if address:
                ray.init(address=address, **options)
            else:
                ray.init(num_cpus=max(1, int(round(self.workers * cpus_per_worker))), **options)
        actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(_Worker)
        self.actors = [actor.remote(build) for _ in range(self.workers)]

    def map(self, jobs: Sequence[Job], items: Sequence[int] | None = None) -> Iterator[tuple[int, Evaluation]]:
        """Keep every actor busy; yield (index, evaluation) in completion order (on ``items`` only, when given)."""
        pending: dict = {}
        queue = list(jobs)
        idle = list(self.actors)
        while queue or pending:
            while queue and idle:
                index, genome = queue.pop(0)
                actor = idle.pop(0)
                pending[actor.evaluate.remote(list(genome), None if items is None else list(items))] = (index, actor)
            done, _ = self.ray.wait(list(pending), num_returns=1)
            index, actor = pending.pop(done[0])
            idle.append(actor)
            try:
                result = self.ray.get(done[0])
            except self.ray.exceptions.RayError as error:
                raise CMAAMError(f"a Ray worker failed: {_first_line(error)}") from None
            yield index, result

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        self.ray.shutdown()


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "Error:" in line]
    return (errors[-1] if errors else lines[0] if lines else type(error).__name__)[:300]


def make_evaluator(build: FitnessBuilder, workers: int = 1, address: str | None = None, gpus_per_worker: float = 0.0):
    """Ray when more than one worker (or a cluster address) is asked for and Ray is installed, else sequential."""
    if workers < 1:
        raise CMAAMError(f"--workers must be at least 1, got {workers}")
    if workers == 1 and not address:
        return SequentialEvaluator(build)
    try:
        import ray  # noqa: F401
    except ImportError:
        if address:
            raise CMAAMError("--ray-address needs Ray (pip install 'cmaam[ray]')") from None
        logger.warning("Ray is not installed; evaluating %d workers' share sequentially", workers)
        return SequentialEvaluator(build)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    return RayEvaluator(build, workers, address, gpus_per_worker)
