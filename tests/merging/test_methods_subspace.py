"""The data-free subspace methods (tsv, iso_c, iso_cts, wudi) against slow float64 references written from the
papers' equations, hand-checkable cases, and the synthetic multi-task problem of cmaam.testing.multitask."""

from __future__ import annotations

import pytest
import torch

from cmaam.core.errors import CMAAMError
from cmaam.merging.methods import get_method
from cmaam.testing.multitask import MultiTaskProblem, compare_methods

SUBSPACE = ("tsv", "iso_c", "iso_cts", "wudi")


def inputs(shape, count, seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=generator, dtype=dtype)
    return base, [base + 0.1 * torch.randn(shape, generator=generator, dtype=dtype) for _ in range(count)]


def polar(matrix):
    """Orthogonal polar factor: P Q^T from matrix = P diag(s) Q^T."""
    left, _, right = torch.linalg.svd(matrix, full_matrices=False)
    return left @ right


def svd_columns(matrix):
    """Singular triplets as a list of (sigma, u column, v row), largest first."""
    left, singular, right = torch.linalg.svd(matrix, full_matrices=False)
    return [(singular[j], left[:, j], right[j]) for j in range(singular.numel())]


def reference_tsv(deltas):
    """TSV-Merge as in the paper: rank-r zero-padded concatenation of each task's top floor(r/T) triplets."""
    rows, columns = deltas[0].shape
    rank, count = min(rows, columns), len(deltas)
    keep = rank // count
    u = torch.zeros(rows, rank, dtype=torch.float64)
    s = torch.zeros(rank, dtype=torch.float64)
    v = torch.zeros(rank, columns, dtype=torch.float64)
    for task, delta in enumerate(deltas):
        for j, (sigma, left, right) in enumerate(svd_columns(delta)[:keep]):
            u[:, task * keep + j], s[task * keep + j], v[task * keep + j] = left, sigma, right
    u, v = polar(u), polar(v)
    merged = torch.zeros(rows, columns, dtype=torch.float64)
    for j in range(rank):
        merged += s[j] * torch.outer(u[:, j], v[j])
    return merged


def reference_iso_c(deltas):
    total = torch.zeros_like(deltas[0])
    for delta in deltas:
        total += delta
    triplets = svd_columns(total)
    mean = sum(sigma for sigma, _, _ in triplets) / len(triplets)
    return sum(mean * torch.outer(left, right) for _, left, right in triplets)


def reference_iso_cts(deltas, fraction):
    rows, columns = deltas[0].shape
    rank, count = min(rows, columns), len(deltas)
    common = int(rank * fraction)
    specific_total = min(round((rank - common) / count), rank // count) * count  # (the min: our guard, see docs)
    common = rank - specific_total
    per_task = (rank - common) // count
    triplets = svd_columns(sum(deltas))[:common]
    basis = torch.zeros(rows, 0, dtype=torch.float64)
    if common:
        basis = torch.stack([left for _, left, _ in triplets], dim=1)
    lefts, values, rights = [], [], []
    for delta in deltas:
        projected = delta - basis @ basis.T @ delta
        for sigma, left, right in svd_columns(projected)[:per_task]:
            lefts.append(left), values.append(sigma), rights.append(right)
    for sigma, left, right in triplets:
        lefts.append(left), values.append(sigma), rights.append(right)
    u, v = polar(torch.stack(lefts, dim=1)), polar(torch.stack(rights, dim=0))
    mean = sum(values) / len(values)
    return sum(mean * torch.outer(u[:, j], v[j]) for j in range(len(values)))


def wudi_loss(merged, deltas):
    """The paper's objective, as written: sum_i ||(tau - tau_i) tau_i^T||_F^2 / ||tau_i||_F^2."""
    return sum(((merged - delta) @ delta.T).square().sum() / delta.square().sum() for delta in deltas)


def reference_wudi_adam(deltas, iterations, learning_rate):
    """Autograd on the paper's loss and Adam (Kingma & Ba, betas 0.9/0.999, eps 1e-8) written out."""
    merged = sum(deltas).clone()
    first, second = torch.zeros_like(merged), torch.zeros_like(merged)
    for step in range(1, iterations + 1):
        variable = merged.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(wudi_loss(variable, deltas), variable)
        first = 0.9 * first + 0.1 * gradient
        second = 0.999 * second + 0.001 * gradient * gradient
        corrected_first = first / (1 - 0.9 ** step)
        corrected_second = second / (1 - 0.999 ** step)
        merged = merged - learning_rate * corrected_first / (corrected_second.sqrt() + 1e-8)
    return merged


@pytest.mark.parametrize("shape,count", [((24, 16), 3), ((16, 24), 4), ((20, 20), 2), ((9, 30), 5)])
def test_tsv_matches_reference(shape, count):
    base, models = inputs(shape, count, seed=1)
    deltas = [m - base for m in models]
    ours = get_method("tsv")(models, base) - base
    assert (ours - reference_tsv(deltas)).abs().max().item() < 1e-10
    scaled = get_method("tsv")(models, base, weight=[0.5] * count, lambda_=2.0) - base
    assert (scaled - 2.0 * reference_tsv([0.5 * d for d in deltas])).abs().max().item() < 1e-10
    single = get_method("tsv")([m.float() for m in models], base.float()) - base.float()
    assert (single.double() - reference_tsv(deltas)).abs().max().item() < 1e-5


@pytest.mark.parametrize("shape,count", [((24, 16), 3), ((16, 24), 4), ((12, 12), 1)])
def test_iso_c_matches_reference(shape, count):
    base, models = inputs(shape, count, seed=2)
    deltas = [m - base for m in models]
    ours = get_method("iso_c")(models, base, lambda_=1.3) - base
    assert (ours - 1.3 * reference_iso_c(deltas)).abs().max().item() < 1e-10
    merged = get_method("iso_c")(models, base) - base
    singular = torch.linalg.svdvals(merged)
    assert (singular - singular.mean()).abs().max().item() < 1e-10  # the flat spectrum


@pytest.mark.parametrize("shape,count,fraction", [((24, 16), 3, 0.8), ((16, 24), 4, 0.5), ((30, 30), 4, 0.8),
                                                  ((21, 21), 3, 0.0), ((20, 20), 3, 0.0), ((20, 20), 3, 1.0)])
def test_iso_cts_matches_reference(shape, count, fraction):
    base, models = inputs(shape, count, seed=3)
    deltas = [m - base for m in models]
    ours = get_method("iso_cts")(models, base, common_space_fraction=fraction) - base
    assert (ours - reference_iso_cts(deltas, fraction)).abs().max().item() < 1e-9


def test_iso_cts_subspace_sizes():
    from cmaam.merging.methods.isotropic import subspace_sizes

    assert subspace_sizes(768, 8, 0.8) == (616, 19)  # ViT-B: int(614.4) = 614 common, round(154 / 8) = 19 each
    assert subspace_sizes(64, 8, 0.8) == (48, 2)
    assert subspace_sizes(20, 3, 0.0) == (2, 6)  # round(20 / 3) = 7 per task would need 21 directions
    assert subspace_sizes(5, 8, 0.8) == (5, 0)  # fewer directions than tasks: all common (Iso-C)


def test_iso_cts_with_everything_common_is_iso_c():
    base, models = inputs((18, 14), 3, seed=4)
    assert torch.allclose(get_method("iso_cts")(models, base, common_space_fraction=1.0),
                          get_method("iso_c")(models, base), atol=1e-10)


@pytest.mark.parametrize("shape,count", [((12, 8), 3), ((8, 12), 2)])
def test_wudi_adam_matches_reference(shape, count):
    """Our Adam on the precomputed gradient 2 (tau G - C) = the paper's autograd loop, step for step."""
    base, models = inputs(shape, count, seed=5)
    deltas = [m - base for m in models]
    for iterations, learning_rate in ((1, 1e-3), (40, 1e-3), (300, 1e-5)):
        ours = get_method("wudi")(models, base, iterations=iterations, learning_rate=learning_rate) - base
        reference = reference_wudi_adam(deltas, iterations, learning_rate)
        assert (ours - reference).abs().max().item() < 1e-9, (iterations, learning_rate)
        assert not torch.allclose(ours, sum(deltas))  # the steps moved it


def test_wudi_closed_form_minimises_the_loss():
    base, models = inputs((12, 16), 3, seed=6)
    deltas = [m - base for m in models]
    exact = (get_method("wudi")(models, base, closed_form=True) - base).requires_grad_(True)
    (gradient,) = torch.autograd.grad(wudi_loss(exact, deltas), exact)
    assert gradient.abs().max().item() < 1e-10
    adam = get_method("wudi")(models, base, iterations=200, learning_rate=1e-3) - base
    start = sum(deltas)
    assert wudi_loss(exact.detach(), deltas) < wudi_loss(adam, deltas) < wudi_loss(start, deltas)


def test_wudi_leaves_out_zero_task_vectors():
    base, models = inputs((10, 6), 2, seed=7)
    with_idle = get_method("wudi")([*models, base.clone()], base, iterations=50, learning_rate=1e-3)
    assert torch.isfinite(with_idle).all()
    assert torch.allclose(with_idle, get_method("wudi")(models, base, iterations=50, learning_rate=1e-3))
    assert torch.equal(get_method("wudi")([base.clone()], base), base)


def test_orthogonal_tasks_are_merged_losslessly():
    """Tasks with mutually orthogonal singular vectors do not interfere: TSV and WUDI return their sum, as
    does Iso-C when their singular values are equal."""
    q_left = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(8)))[0]
    q_right = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(9)))[0]
    base = torch.zeros(12, 12, dtype=torch.float64)
    strengths = ([3.0, 1.0, 0.5, 2.0], [1.0, 1.0, 1.0, 1.0])
    for values in strengths:
        tasks = [sum(values[j] * torch.outer(q_left[:, 4 * t + j], q_right[:, 4 * t + j]) for j in range(4))
                 for t in range(3)]
        total = sum(tasks)
        assert torch.allclose(get_method("tsv")(tasks, base), total, atol=1e-10)
        assert torch.allclose(get_method("wudi")(tasks, base, closed_form=True), total, atol=1e-10)
    assert torch.allclose(get_method("iso_c")(tasks, base), total, atol=1e-10)


@pytest.mark.parametrize("name", SUBSPACE)
def test_other_tensors_fall_back_to_the_mean_task_vector(name):
    """Norms, biases (and 3-D tensors): base + lambda * mean task vector, as the papers' code."""
    for shape in ((7,), (3, 4, 5)):
        base, models = inputs(shape, 3, seed=10)
        expected = base + sum(m - base for m in models) / 3
        assert torch.allclose(get_method(name)(models, base), expected, atol=1e-12)
    if name != "wudi":
        base, models = inputs((7,), 2, seed=11)
        assert torch.allclose(get_method(name)(models, base, lambda_=0.5),
                              base + 0.5 * sum(m - base for m in models) / 2, atol=1e-12)


def test_tsv_falls_back_when_a_matrix_is_narrower_than_the_task_count():
    base, models = inputs((2, 9), 3, seed=12)
    assert torch.allclose(get_method("tsv")(models, base), base + sum(m - base for m in models) / 3, atol=1e-12)


@pytest.mark.parametrize("name", SUBSPACE)
def test_keeps_dtype_and_refuses_bad_input(name):
    base, models = inputs((8, 6), 2, seed=13, dtype=torch.bfloat16)
    assert get_method(name)(models, base).dtype == torch.bfloat16
    with pytest.raises(CMAAMError, match="base model is required"):
        get_method(name)(models, None)
    with pytest.raises(CMAAMError, match="different shapes"):
        get_method(name)([models[0], torch.zeros(8, 7, dtype=torch.bfloat16)], base)
    with pytest.raises(CMAAMError, match="needs at least 1 model"):
        get_method(name)([], base)


def test_subspace_methods_beat_task_arithmetic_on_the_synthetic_problem():
    """8 tasks of rank 8 fill a 64 x 64 layer through overlapping subspaces (bench/subspace_merging.py)."""
    rows = {row.label: row for row in compare_methods(MultiTaskProblem(), seeds=3)}
    ta = rows["task_arithmetic (lambda 1)"]
    assert rows["task_arithmetic (lambda 0.3)"].alignment == pytest.approx(ta.alignment)  # scale-free
    for name in SUBSPACE:
        # no task left behind: the worst task is better served than by task arithmetic
        assert rows[name].worst_alignment > ta.worst_alignment + 0.03, name
        # and the update is closer to every task's than the plain sum of the task vectors
        assert rows[name].score > ta.score + 0.2, name
    for name in ("tsv", "iso_c", "wudi"):
        assert rows[name].alignment > ta.alignment, name
        # even when task arithmetic gets its best lambda and the method its best rescaling
        assert rows[name].best_scaled > ta.best_scaled, name
    assert rows["wudi"].score > ta.best_scaled + 0.3
    assert rows["wudi (closed form)"].score >= rows["wudi"].score


YAML = """
merge_method: $method
base_model: $base
models:
  - model: $ft1
  - model: $ft2
    parameters: {weight: 0.8}
dtype: float32
"""


@pytest.mark.parametrize("method", SUBSPACE)
def test_yaml_runs_the_method_per_tensor(method, family, tmp_path):
    """Through cmaam.mergekit: projections get the subspace merge, norms the mean task vector."""
    from cmaam.core.options import ExecutionOptions
    from cmaam.io import CheckpointReader
    from cmaam.merging.config_merge import merge_from_config
    from merging_helpers import write_yaml

    models = family("qwen2")
    config = write_yaml(tmp_path, YAML, dict(models, method=method))
    merged = CheckpointReader(merge_from_config(config, tmp_path / "out", ExecutionOptions(device="cpu",
                                                                                          progress=False)))
    readers = {key: CheckpointReader(models[key]) for key in ("base", "ft1", "ft2")}
    for name in ("model.layers.2.self_attn.k_proj.weight", "model.layers.0.mlp.down_proj.weight",
                 "model.norm.weight", "model.layers.1.self_attn.q_proj.bias"):
        base, first, second = (readers[key].get(name) for key in ("base", "ft1", "ft2"))
        expected = get_method(method)([first, second], base, weight=[1.0, 0.8])
        assert torch.equal(merged.get(name), expected), name
        if base.dim() == 1:
            assert torch.allclose(expected, base + (first - base + 0.8 * (second - base)) / 2, atol=1e-6)
