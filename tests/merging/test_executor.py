"""The streaming executor: one read per input tensor whatever the consumers, prefetch, checks, equal outputs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from cmaam.core.options import ExecutionOptions

from cmaam.alignment.layouts import get_layout
from cmaam.alignment.scores.analyzer import analyze_pair, score_tensor_pair
from cmaam.alignment.scores.cmbc import embedding_subspace
from cmaam.core.errors import CMAAMError
from cmaam.io import CheckpointReader, CheckpointWriter, write_state_dict
from cmaam.merging.executor import ModelOutput, TensorJob, available_cores, execute, plan_specs, run_merge
from cmaam.merging.pairs import check_pair, interpolate, pair_jobs
from cmaam.merging.sweep import sweep
from cmaam.testing.reads import record_reads

THREADS_AT_IMPORT = torch.get_num_threads()
NAMES = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "model.layers.0.input_layernorm.weight",
         "model.layers.0.counter", "lm_head.weight"]


def toy_model(folder: Path, seed: int, replace: dict | None = None) -> Path:
    """A small Llama-named model: bf16 matrices, a float32 norm, an int64 buffer."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        NAMES[0]: torch.randn(12, 8, generator=generator).to(torch.bfloat16),
        NAMES[1]: torch.randn(16, 8, generator=generator).to(torch.bfloat16),
        NAMES[2]: torch.rand(8, generator=generator) + 0.5,
        NAMES[3]: torch.arange(5) + seed,
        NAMES[4]: torch.randn(12, 8, generator=generator).to(torch.bfloat16),
    }
    tensors.update(replace or {})
    return write_state_dict(folder, tensors, config={"model_type": "llama", "dtype": "bfloat16"})


@pytest.fixture
def pair(tmp_path):
    return toy_model(tmp_path / "T", 0), toy_model(tmp_path / "S", 1)


def readers_of(target: Path, source: Path) -> dict[str, CheckpointReader]:
    return {"target": CheckpointReader(target), "source": CheckpointReader(source)}


class Recorder:
    """A consumer keeping what it was given."""

    def __init__(self):
        self.seen: list[tuple[str, list[torch.Tensor]]] = []
        self.finished = False

    def consume(self, job, tensors):
        self.seen.append((job.output_name, tensors))
        return None

    def finish(self):
        self.finished = True


@pytest.fixture
def counted(monkeypatch):
    """Every read of a tensor as (folder name, tensor name), in call order (whole tensors here: all are small)."""
    return record_reads(monkeypatch, lambda folder, name, *rows: (folder, name))


def stored(folder: Path) -> dict[str, torch.Tensor]:
    reader = CheckpointReader(folder)
    return {name: reader.get(name) for name in reader.keys()}


def test_each_input_is_read_once_for_every_consumer(pair, tmp_path, counted):
    target, source = pair
    readers = readers_of(target, source)
    jobs = pair_jobs(readers["target"], dict.fromkeys(NAMES[:3] + NAMES[4:], 0.0), "linear")
    specs = plan_specs(readers, jobs)
    first, second = Recorder(), Recorder()
    with CheckpointWriter(tmp_path / "a", specs, reference=target) as writer_a, \
            CheckpointWriter(tmp_path / "b", specs, reference=target) as writer_b:
        outputs = [ModelOutput(writer_a, lambda ts: interpolate(ts, 0.25)),
                   ModelOutput(writer_b, lambda ts: interpolate(ts, 0.75))]
        execute(readers, jobs, [first, *outputs, second], ExecutionOptions(progress=False))
    # 4 floating tensors from both models, the int buffer only from the target (a copy job)
    assert sorted(counted) == sorted([("T", n) for n in NAMES] + [("S", n) for n in NAMES if n != NAMES[3]])
    assert first.finished and second.finished
    # both recorders got the very same tensor objects; compute jobs as float32, the copy as stored
    for (name_a, tensors_a), (name_b, tensors_b) in zip(first.seen, second.seen):
        assert name_a == name_b and all(a is b for a, b in zip(tensors_a, tensors_b))
    kinds = {name: [t.dtype for t in tensors] for name, tensors in first.seen}
    assert kinds[NAMES[1]] == [torch.float32, torch.float32] and kinds[NAMES[3]] == [torch.int64]
    # and the two outputs hold their own alphas
    t, s = stored(target), stored(source)
    for folder, alpha in (("a", 0.25), ("b", 0.75)):
        merged = stored(tmp_path / folder)
        expected = interpolate([t[NAMES[1]].float(), s[NAMES[1]].float()], alpha).to(torch.bfloat16)
        assert torch.equal(merged[NAMES[1]], expected) and torch.equal(merged[NAMES[3]], t[NAMES[3]])


def test_compute_jobs_reach_consumers_as_float32_of_the_stored_values(pair):
    """Each consumer gets exactly what was read: values equal the stored tensors converted to float32."""
    target, source = pair
    readers = readers_of(target, source)
    recorder = Recorder()
    execute(readers, [TensorJob(NAMES[1], [("target", NAMES[1]), ("source", NAMES[1])], compute=True)],
            [recorder], ExecutionOptions(progress=False))
    (_, (t, s)), = recorder.seen
    assert torch.equal(t, stored(target)[NAMES[1]].float()) and torch.equal(s, stored(source)[NAMES[1]].float())


def test_nan_input_is_one_line_error_unless_allowed(tmp_path):
    target = toy_model(tmp_path / "T", 0)
    broken = toy_model(tmp_path / "S", 1, replace={NAMES[2]: torch.tensor([1.0, float("nan")] + [0.0] * 6)})
    readers = readers_of(target, broken)
    jobs = pair_jobs(readers["target"], {NAMES[2]: 0.5}, "linear")
    with pytest.raises(CMAAMError) as error:
        run_merge(readers, jobs, tmp_path / "out", ExecutionOptions(progress=False), reference=target)
    assert str(error.value) == f"{broken}: {NAMES[2]}: contains NaN or Inf (pass --allow-nonfinite to merge anyway)"
    assert not (tmp_path / "out").exists()
    run_merge(readers, jobs, tmp_path / "out", ExecutionOptions(allow_nonfinite=True, progress=False), reference=target)
    assert torch.isnan(stored(tmp_path / "out")[NAMES[2]][1])


def test_nonfinite_merge_result_names_the_output_and_its_label(pair, tmp_path):
    target, source = pair
    readers = readers_of(target, source)
    jobs = [TensorJob(NAMES[2], [("target", NAMES[2]), ("source", NAMES[2])], lambda ts: ts[0] / 0.0)]
    specs = plan_specs(readers, jobs)
    with pytest.raises(CMAAMError, match=rf"^merged {NAMES[2]} \(alpha 0.3\): contains NaN or Inf"):
        with CheckpointWriter(tmp_path / "out", specs, reference=target) as writer:
            execute(readers, jobs, [ModelOutput(writer, label=" (alpha 0.3)")], ExecutionOptions(progress=False))
    assert not (tmp_path / "out").exists()


@pytest.fixture
def checked_places(monkeypatch):
    """Where each NaN/Inf check of a run looked: an input's "path: name" or a result's "merged name"."""
    from cmaam.merging import executor

    places = []
    original = executor.check_finite
    monkeypatch.setattr(executor, "check_finite", lambda tensor, where: places.append(where) or original(tensor, where))
    return places


def test_weighted_sums_check_their_inputs_through_their_outputs(tmp_path, checked_places):
    """A lerp's output is NaN/Inf wherever an input is: only outputs are checked, and a failing output names the
    input, even when that input's weight is 0 (0 * Inf is NaN)."""
    target, source = toy_model(tmp_path / "T", 0), toy_model(tmp_path / "S", 1)
    readers = readers_of(target, source)
    run_merge(readers, pair_jobs(readers["target"], {NAMES[1]: 0.5, NAMES[2]: 0.5}, "linear"), tmp_path / "out",
              ExecutionOptions(progress=False), reference=target)
    merged = [place for place in checked_places if place.endswith((NAMES[1], NAMES[2]))]
    assert sorted(merged) == sorted([f"merged {NAMES[1]}", f"merged {NAMES[2]}"])  # copies are checked as read
    broken = toy_model(tmp_path / "B", 1, replace={NAMES[1]: torch.full((16, 8), float("inf"))})
    readers = readers_of(target, broken)
    with pytest.raises(CMAAMError) as error:
        run_merge(readers, pair_jobs(readers["target"], {NAMES[1]: 0.0}, "linear"), tmp_path / "bad",
                  ExecutionOptions(progress=False), reference=target)
    assert str(error.value) == f"{broken}: {NAMES[1]}: contains NaN or Inf (pass --allow-nonfinite to merge anyway)"
    assert not (tmp_path / "bad").exists()


def test_other_merges_check_their_inputs_even_when_the_output_is_finite(tmp_path, checked_places):
    """A merge not known to propagate NaN/Inf (here one keeping the target) still has its inputs checked."""
    target = toy_model(tmp_path / "T", 0)
    broken = toy_model(tmp_path / "B", 1, replace={NAMES[1]: torch.full((16, 8), float("nan"))})
    readers = readers_of(target, broken)
    jobs = [TensorJob(NAMES[1], [("target", NAMES[1]), ("source", NAMES[1])], lambda tensors: tensors[0])]
    with pytest.raises(CMAAMError, match=rf"^{broken}: {NAMES[1]}: contains NaN or Inf"):
        run_merge(readers, jobs, tmp_path / "out", ExecutionOptions(progress=False), reference=target)
    assert f"{target}: {NAMES[1]}" in checked_places


def test_a_sweep_checks_its_inputs_through_every_alpha(tmp_path, checked_places):
    target = toy_model(tmp_path / "T", 0)
    sweep(toy_model(tmp_path / "S", 1), target, tmp_path / "fine", "0.2,0.6", ExecutionOptions(progress=False))
    assert not [place for place in checked_places if place.endswith(f": {NAMES[1]}")]
    assert sum(place.startswith(f"merged {NAMES[1]}") for place in checked_places) == 2
    broken = toy_model(tmp_path / "B", 1, replace={NAMES[1]: torch.full((16, 8), float("nan"))})
    with pytest.raises(CMAAMError, match=rf"^{broken}: {NAMES[1]}: contains NaN or Inf"):
        sweep(broken, target, tmp_path / "bad", "0.2,0.6", ExecutionOptions(progress=False))
    assert not (tmp_path / "bad").exists()


def test_kernels_get_a_third_of_the_cores_during_a_run_unless_the_user_chose(pair, monkeypatch):
    from cmaam.merging import executor

    target, source = pair
    readers = readers_of(target, source)
    seen = []

    class Threads:
        def consume(self, job, tensors):
            seen.append(torch.get_num_threads())

        def finish(self):
            pass

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(executor.os, "sched_getaffinity", lambda pid: set(range(7)), raising=False)
    execute(readers, [TensorJob(NAMES[2], [("target", NAMES[2])])], [Threads()], ExecutionOptions(progress=False))
    monkeypatch.setattr(executor.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    execute(readers, [TensorJob(NAMES[2], [("target", NAMES[2])])], [Threads()], ExecutionOptions(progress=False))
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    execute(readers, [TensorJob(NAMES[2], [("target", NAMES[2])])], [Threads()], ExecutionOptions(progress=False))
    assert seen == [2, 1, before] and torch.get_num_threads() == before


@pytest.mark.parametrize("cores, omp, expected", [(2, None, 2), (7, None, 3), (16, None, 3), (16, "1", 16),
                                                  (16, "4", 4)])
def test_merges_at_once_use_about_every_core(monkeypatch, cores, omp, expected):
    """Merge threads times torch's threads per kernel stays near the core count, never a team per core each."""
    from cmaam.merging import executor

    monkeypatch.setattr(executor.os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    before = torch.get_num_threads()
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
        torch.set_num_threads(int(omp))  # what the user's setting gives torch at start-up
    try:
        with executor.kernel_threads():
            assert executor.merge_threads() == expected
    finally:
        torch.set_num_threads(before)


def test_wide_kernels_get_the_threads_of_outside_a_run(monkeypatch):
    from cmaam.merging import executor

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(executor.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    torch.set_num_threads(2)
    try:
        with executor.wide_kernels():
            assert torch.get_num_threads() == 2  # outside a run: unchanged
        with executor.kernel_threads():
            assert torch.get_num_threads() == 1
            with executor.wide_kernels():
                assert torch.get_num_threads() == 2
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(THREADS_AT_IMPORT)


def test_a_merge_beyond_the_stored_dtype_range_is_an_error(tmp_path):
    """Checked as written: 80000 is finite in float32 but Inf in float16."""
    model = write_state_dict(tmp_path / "half", {"w": torch.full((4, 4), 40000.0, dtype=torch.float16)},
                             config={"model_type": "llama"})
    readers = {"target": CheckpointReader(model)}
    jobs = [TensorJob("w", [("target", "w")], lambda tensors: tensors[0] * 2.0)]
    with pytest.raises(CMAAMError, match="^merged w: contains NaN or Inf"):
        run_merge(readers, jobs, tmp_path / "out", ExecutionOptions(progress=False), reference=model)
    assert not (tmp_path / "out").exists()
    halved = [TensorJob("w", [("target", "w")], lambda tensors: tensors[0] * 0.5)]
    run_merge(readers, halved, tmp_path / "fine", ExecutionOptions(progress=False), reference=model)
    assert torch.equal(CheckpointReader(tmp_path / "fine").get("w"), torch.full((4, 4), 20000.0, dtype=torch.float16))


def test_next_job_is_prefetched_while_the_current_one_is_consumed(pair, counted):
    """The consumer of job i waits until job i + 1 has been read: without read-ahead this never happens."""
    target, source = pair
    readers = readers_of(target, source)
    jobs = [TensorJob(name, [("target", name)]) for name in NAMES]

    class WaitsForReadAhead:
        def __init__(self):
            self.order: list[str] = []

        def consume(self, job, tensors):
            index = NAMES.index(job.output_name)
            if index + 1 < len(NAMES):
                for _ in range(2000):
                    if ("T", NAMES[index + 1]) in counted:
                        break
                    threading.Event().wait(0.005)
                else:
                    raise AssertionError(f"{NAMES[index + 1]} was not read while {job.output_name} was consumed")
            self.order.append(job.output_name)

        def finish(self):
            pass

    consumer = WaitsForReadAhead()
    execute(readers, jobs, [consumer], ExecutionOptions(progress=False))
    assert consumer.order == NAMES and counted == [("T", name) for name in NAMES]


def test_outputs_are_written_behind_in_a_writer_thread(pair, tmp_path, monkeypatch):
    target, source = pair
    readers = readers_of(target, source)
    threads = set()
    original = CheckpointWriter.add
    monkeypatch.setattr(CheckpointWriter, "add", lambda self, name, tensor: threads.add(
        threading.current_thread().name) or original(self, name, tensor))
    run_merge(readers, pair_jobs(readers["target"], {NAMES[1]: 0.5}, "linear"), tmp_path / "out",
              ExecutionOptions(progress=False), reference=target)
    assert len(threads) == 1 and next(iter(threads)).startswith("cmaam-write")


@pytest.mark.skipif(available_cores() < 2, reason="one core: one merge thread")
def test_whole_tensor_merges_run_in_merge_threads_at_once(pair, tmp_path):
    """Two whole-tensor merges wait for each other at a barrier: only merges run at the same time get through."""
    target, source = pair
    readers = readers_of(target, source)
    barrier, threads = threading.Barrier(2, timeout=20), []

    def meeting(tensors):
        threads.append(threading.current_thread().name)
        barrier.wait()
        return tensors[0] + tensors[1]

    jobs = [TensorJob(name, [("target", name), ("source", name)], meeting) for name in (NAMES[0], NAMES[4])]
    run_merge(readers, jobs, tmp_path / "out", ExecutionOptions(progress=False), reference=target)
    assert len(threads) == 2 and all(name.startswith("cmaam-merge") for name in threads)
    t, s, merged = stored(target), stored(source), stored(tmp_path / "out")
    for name in (NAMES[0], NAMES[4]):
        assert torch.equal(merged[name], (t[name].float() + s[name].float()).to(torch.bfloat16))


def test_a_merge_only_run_hands_the_merge_threads_the_inputs_as_stored(pair, tmp_path, monkeypatch):
    """Without a consumer that needs float32 (an analysis), the loader does not convert: the merge threads do."""
    from cmaam.merging import executor

    target, source = pair
    readers = readers_of(target, source)
    seen = []
    original = executor.merged
    monkeypatch.setattr(executor, "merged", lambda merge, tensors, *convert: seen.append(
        (tuple(tensor.dtype for tensor in tensors), threading.current_thread().name)) or original(merge, tensors,
                                                                                                   *convert))
    jobs = pair_jobs(readers["target"], {NAMES[0]: 0.2, NAMES[2]: 0.9}, "linear")
    run_merge(readers, jobs, tmp_path / "stored", ExecutionOptions(progress=False), reference=target)
    assert {dtypes for dtypes, _ in seen} == {(torch.bfloat16,) * 2, (torch.float32,) * 2}
    assert all(thread.startswith("cmaam-merge") for _, thread in seen)
    seen.clear()
    with CheckpointWriter(tmp_path / "converted", plan_specs(readers, jobs), reference=target) as writer:
        execute(readers, jobs, [ModelOutput(writer), Recorder()], ExecutionOptions(progress=False))
    assert {dtypes for dtypes, _ in seen} == {(torch.float32,) * 2}  # the recorder needs float32: converted once
    merged_as_stored, merged_converted = stored(tmp_path / "stored"), stored(tmp_path / "converted")
    assert list(merged_as_stored) == list(merged_converted)
    assert all(torch.equal(merged_as_stored[name], merged_converted[name]) for name in merged_as_stored)


def test_an_error_in_a_merge_thread_is_one_line_and_writes_nothing(pair, tmp_path):
    target, source = pair
    readers = readers_of(target, source)

    def failing(tensors):
        raise CMAAMError("merge failed here")

    jobs = [TensorJob(NAMES[1], [("target", NAMES[1]), ("source", NAMES[1])], lambda ts: ts[0] * 0.5),
            TensorJob(NAMES[4], [("target", NAMES[4]), ("source", NAMES[4])], failing)]
    with pytest.raises(CMAAMError, match="^merge failed here$"):
        run_merge(readers, jobs, tmp_path / "out", ExecutionOptions(progress=False), reference=target)
    assert not (tmp_path / "out").exists()


def test_streamed_merge_equals_a_whole_model_merge(pair, tmp_path):
    """run_merge against the method applied to whole state dicts in float32, cast to the stored dtype."""
    target, source = pair
    readers = readers_of(target, source)
    alphas = {NAMES[0]: 0.2, NAMES[1]: 0.5, NAMES[2]: 0.9}
    run_merge(readers, pair_jobs(readers["target"], alphas, "linear"), tmp_path / "out",
              ExecutionOptions(progress=False), reference=target)
    t, s, merged = stored(target), stored(source), stored(tmp_path / "out")
    assert list(merged) == list(t)
    for name in t:
        if name in alphas:
            expected = interpolate([t[name].float(), s[name].float()], alphas[name]).to(t[name].dtype)
        else:
            expected = t[name]
        assert merged[name].dtype == t[name].dtype and torch.equal(merged[name], expected), name


def test_sweep_reads_once_and_equals_whole_model_merges(pair, tmp_path, counted):
    target, source = pair
    outputs = sweep(source, target, tmp_path / "sweep", [0.1, 0.5, 0.8], ExecutionOptions(device="cpu", progress=False))
    reads = [call for call in counted if call[0] in ("T", "S")]
    assert len(reads) == len(set(reads)) == 2 * len(NAMES) - 1  # the int buffer is copied from the target alone
    t, s = stored(target), stored(source)
    for alpha, output in zip((0.1, 0.5, 0.8), outputs):
        merged = stored(output)
        expected = interpolate([t[NAMES[4]].float(), s[NAMES[4]].float()], alpha).to(torch.bfloat16)
        assert torch.equal(merged[NAMES[4]], expected) and torch.equal(merged[NAMES[3]], t[NAMES[3]])


def test_analysis_reads_the_embedding_once_and_keeps_target_order(qwen_vlm_pair, counted):
    target, source = qwen_vlm_pair
    source_reader, target_reader = CheckpointReader(source), CheckpointReader(target)
    analysis = analyze_pair(source_reader, target_reader, ExecutionOptions(device="cpu", progress=False))
    assert analysis.embedding is not None
    assert len(counted) == len(set(counted)) == 2 * len(analysis.tensors)
    assert counted[:2] == [(source.name, analysis.embedding), (target.name, analysis.embedding)]  # read first
    assert list(analysis.tensors) == check_pair(source_reader, target_reader)  # target order
    # each score equals the pair scored alone, with the basis of the target's embedding
    layout = get_layout(config=target_reader.config)
    basis = embedding_subspace(target_reader.get(analysis.embedding, dtype=torch.float32))
    for name in [*layout.bridge_outputs(analysis.tensors), analysis.embedding]:
        bridge = layout.is_bridge_output(name)
        expected = score_tensor_pair(name, layout.classify(name), source_reader.get(name, dtype=torch.float32),
                                     target_reader.get(name, dtype=torch.float32), basis if bridge else None, bridge)
        assert analysis.tensors[name] == expected


@pytest.fixture(scope="module")
def qwen_vlm_pair(tiny_qwen2vl_pair):
    target, source = tiny_qwen2vl_pair
    return Path(target), Path(source)
