"""A synthetic multi-task merging problem whose answer is known: one linear layer, T tasks, each a low-rank
update acting on its own input subspace, the subspaces overlapping through a shared part.

Task t needs the update S_t = A_t diag(s_t) B_t^T (rank ``rank``; B_t spans its inputs, A_t its outputs,
both partly drawn from subspaces shared by all tasks). Merging sees the fine-tuned task vector
tau_t = S_t + dense noise (the rest of fine-tuning). A merged update D is judged per task on inputs X_t drawn
from span(B_t): alignment_t = cos(D X_t, S_t X_t) (scale-free; 1 = the task's own direction) and
score_t = 1 - ||(D - S_t) X_t|| / ||S_t X_t|| (1: the task's own update, 0: the base layer, below 0: worse
than not merging).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SyntheticTask:
    """One task: what merging sees (``task_vector``), what the task needs (``update``), its ``inputs``."""

    task_vector: torch.Tensor
    update: torch.Tensor
    inputs: torch.Tensor


@dataclass
class MultiTaskProblem:
    """Sizes of the problem; ``dim`` x ``dim`` layer, ``tasks`` x ``rank`` = ``dim`` fills the layer."""

    dim: int = 64
    tasks: int = 8
    rank: int = 8
    shared: int = 4          # dimension of the input/output subspaces every task draws from
    overlap: float = 1.0     # weight of the shared part in each task's subspaces
    noise: float = 0.05      # dense fine-tuning noise, relative to the update's norm
    spread: float = 2.0      # task strengths are spread**u, u uniform in [-1, 1]
    samples: int = 256       # inputs per task
    scale: float = 1e-3      # overall size (RMS of the entries ~ 1e-4, as fine-tuning deltas)

    def build(self, seed: int = 0) -> list[SyntheticTask]:
        """The tasks for ``seed`` (float64; same seed, same tensors)."""
        generator = torch.Generator().manual_seed(seed)

        def normal(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator, dtype=torch.float64)

        def orthonormal(matrix: torch.Tensor) -> torch.Tensor:
            return torch.linalg.qr(matrix)[0]

        shared_inputs = orthonormal(normal(self.dim, self.shared))
        shared_outputs = orthonormal(normal(self.dim, self.shared))
        tasks = []
        for _ in range(self.tasks):
            inputs_basis = orthonormal(normal(self.dim, self.rank)
                                       + self.overlap * shared_inputs @ normal(self.shared, self.rank))
            outputs_basis = orthonormal(normal(self.dim, self.rank)
                                        + self.overlap * shared_outputs @ normal(self.shared, self.rank))
            strength = self.spread ** (2 * torch.rand(1, generator=generator, dtype=torch.float64).item() - 1)
            singular = strength * (1 + torch.rand(self.rank, generator=generator, dtype=torch.float64))
            update = self.scale * (outputs_basis * singular) @ inputs_basis.T
            dense = normal(self.dim, self.dim)
            dense *= self.noise * update.norm() / dense.norm()
            tasks.append(SyntheticTask(update + dense, update, inputs_basis @ normal(self.rank, self.samples)))
        return tasks


def task_scores(merged_update: torch.Tensor, tasks: list[SyntheticTask], factor: float = 1.0) -> list[float]:
    """1 - ||(c D - S_t) X_t|| / ||S_t X_t|| for each task t, c = ``factor`` (see the module docstring)."""
    merged_update = merged_update.to(torch.float64)
    scores = []
    for task in tasks:
        target = task.update @ task.inputs
        scores.append(1 - (factor * (merged_update @ task.inputs) - target).norm().item() / target.norm().item())
    return scores


# (label, registered method, parameters): task arithmetic as the plain sum (lambda 1) and at FusionBench's
# default lambda 0.3, then the subspace methods at their papers' defaults.
CONTENDERS = (
    ("task_arithmetic (lambda 1)", "task_arithmetic", {}),
    ("task_arithmetic (lambda 0.3)", "task_arithmetic", {"lambda_": 0.3}),
    ("tsv", "tsv", {}),
    ("iso_c", "iso_c", {}),
    ("iso_cts", "iso_cts", {}),
    ("wudi", "wudi", {}),
    ("wudi (closed form)", "wudi", {"closed_form": True}),
)
SCALES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0)


@dataclass
class MethodFigures:
    """One method over the seeds (means): alignment over tasks and of the worst task, relative score at the
    method's defaults and after the best rescaling of its update (``best_scale``, an oracle)."""

    label: str
    alignment: float
    worst_alignment: float
    score: float
    best_scaled: float
    best_scale: float


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def compare_methods(problem: MultiTaskProblem, seeds: int = 5,
                    contenders: tuple = CONTENDERS) -> list[MethodFigures]:
    """Merge each seed's task vectors (float32, base 0) with every contender; average the figures over seeds.

    Alignment of task t: cosine between the merged layer's output change D X_t and the task's own S_t X_t
    (scale-free: 1 = the task's direction, whatever the merge's lambda). Score: see ``task_scores``.
    """
    from cmaam.merging.methods import get_method

    figures: dict[str, dict[str, list[float]]] = {label: {"alignment": [], "worst": []} for label, _, _ in contenders}
    scaled: dict[str, dict[float, list[float]]] = {label: {s: [] for s in SCALES} for label, _, _ in contenders}
    for seed in range(seeds):
        tasks = problem.build(seed)
        base = torch.zeros(problem.dim, problem.dim)
        models = [task.task_vector.float() for task in tasks]
        targets = [task.update @ task.inputs for task in tasks]
        for label, name, parameters in contenders:
            values = dict(parameters)
            if name == "task_arithmetic":
                values["weight"] = [1.0] * len(models)
            update = get_method(name)(models, base, **values).to(torch.float64)
            outputs = [update @ task.inputs for task in tasks]
            alignments = [torch.nn.functional.cosine_similarity(output.flatten(), target.flatten(), dim=0).item()
                          for output, target in zip(outputs, targets)]
            figures[label]["alignment"].append(_mean(alignments))
            figures[label]["worst"].append(min(alignments))
            for factor in SCALES:  # 1.0 among them: the method as defined
                scaled[label][factor].append(_mean([1 - (factor * output - target).norm().item() / target.norm().item()
                                                    for output, target in zip(outputs, targets)]))
    rows = []
    for label, _, _ in contenders:
        best = max(SCALES, key=lambda factor: sum(scaled[label][factor]))
        rows.append(MethodFigures(label, _mean(figures[label]["alignment"]), _mean(figures[label]["worst"]),
                                  _mean(scaled[label][1.0]), _mean(scaled[label][best]), best))
    return rows
