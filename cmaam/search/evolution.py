"""The CMA-ES search loop: configs, the run folder, resumable optimiser state, tracking and final outputs.

Resumption without pickles: every evaluation is appended (fsynced) to ``evaluations.jsonl`` and
``state.json`` is rewritten atomically after each generation. ``cma`` draws its samples from a
seeded generator of our own, so a resumed run rebuilds the optimiser by replaying the finished
generations' ask/tell with the logged fitness; the interrupted generation asks the same candidates
again and takes every one already scored from the log. No genome is evaluated twice.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cmaam.core.config import InvalidValue, apply_overrides, at_least, from_dict, one_of, read_yaml, setting
from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.core.presets import preset_folder
from cmaam.io.atomic import atomic_directory, atomic_write_json, atomic_write_text, atomic_write_yaml, claim_output
from cmaam.search.fitness import Evaluation, FitnessConfig, build_fitness
from cmaam.search.genome import GenomeLayout, GenomeSpec
from cmaam.search.inmemory import open_readers, plan_layout

STATE_FORMAT = 1
KEY_DECIMALS = 10  # genomes equal to 1e-10 share one cache entry
BOUNDARY_HANDLERS = {"transform": "BoundTransform", "penalty": "BoundPenalty"}
PRESET_FOLDER = preset_folder("evolve")


# -- configuration ---------------------------------------------------------------------------
@dataclass
class ModelEntry:
    """One input model: a local folder or a hub id already in the HF cache; ``build`` makes a tiny one."""

    name: str
    path: str
    build: dict[str, Any] | None = None  # {type: llama, seed: 0} or {perturb: other_name, scale: 0.3, seed: 1}


@dataclass
class EvolveConfig:
    """A search: models, genome, fitness, optimiser settings and where the run folder goes.

    Loaded by ``cmaam.core.config`` (``load_config``): unknown keys and bad values are one-line errors
    naming the key. ``device``, ``dtype``, ``seed``, ``trust_remote_code``, ``allow_pickle`` and ``progress``
    are the execution options (``options``) of the in-memory merges and the saved best model.
    """

    name: str
    models: list[ModelEntry]
    base_model: str
    genome: GenomeSpec = field(default_factory=GenomeSpec)
    fitness: FitnessConfig = field(default_factory=FitnessConfig)
    generations: int = setting(100, check=at_least(1))
    population: int | None = setting(None, check=at_least(2))  # None: cma's default 4 + 3 ln(genes)
    seed: int = setting(0, check=at_least(0))
    boundary: str = setting("transform", check=one_of(tuple(BOUNDARY_HANDLERS)))  # BoundTransform / BoundPenalty
    device: str = "auto"
    dtype: str | None = None  # dtype of the in-memory model; default: as stored
    workers: int = setting(1, check=at_least(1))
    ray_address: str | None = None
    gpus_per_worker: float = setting(0.0, check=at_least(0))
    output_dir: str | None = None  # default results/<name>
    tokenizer: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    save_model: bool = True
    wandb_mode: str | None = setting(None, check=one_of(("offline", "online", "disabled")))  # None: $WANDB_MODE
    figure_every: int = setting(1, check=at_least(0))  # redraw the figures every N generations (0: only at the end)
    progress: bool = True

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or Path("results") / self.name).resolve()

    @property
    def options(self) -> ExecutionOptions:
        """The execution options of the merges (in memory, and the best model written at the end)."""
        return ExecutionOptions(device=self.device, dtype=self.dtype, seed=self.seed,
                                trust_remote_code=self.trust_remote_code, allow_pickle=self.allow_pickle,
                                progress=self.progress)

    def validate(self) -> None:
        """What involves several keys: two models or more, unique names, a base model among them."""
        if len(self.models) < 2:
            raise InvalidValue("models", "must list at least two models ({name, path})")
        names = [model.name for model in self.models]
        if len(set(names)) != len(names):
            raise InvalidValue("models", f"model names must be unique, got {names}")
        for key in ("name", "base_model"):
            if not getattr(self, key):
                raise InvalidValue(key, "must not be empty")
        if self.base_model not in names:
            raise InvalidValue("base_model", f"{self.base_model!r} is not one of the models ({', '.join(names)})")


def parse_config(data: Mapping[str, Any], where: str = "config") -> EvolveConfig:
    """Validate a YAML mapping into an EvolveConfig (one-line errors naming the bad key)."""
    return from_dict(EvolveConfig, data, where)


def load_config(path: str | Path, overrides: Sequence[str] = (), settings: Mapping[str, Any] | None = None
                ) -> EvolveConfig:
    """Read an evolve YAML: a file path, or a preset name from cmaam/configs/evolve (e.g. ``tiny``).

    ``overrides`` are ``KEY=VALUE`` assignments (``--set``); ``settings`` are top-level values already typed
    (the command's flags), applied last. Everything is validated together.
    """
    path = Path(path)
    if not path.exists() and not path.suffix and (PRESET_FOLDER / f"{path}.yaml").is_file():
        path = PRESET_FOLDER / f"{path}.yaml"
    if not path.is_file():
        presets = sorted(p.stem for p in PRESET_FOLDER.glob("*.yaml")) if PRESET_FOLDER.is_dir() else []
        raise CMAAMError(f"{path}: config not found" + (f" (presets: {', '.join(presets)})" if presets else ""))
    values = read_yaml(path) or {}
    if not isinstance(values, dict):
        raise CMAAMError(f"{path}: expected a mapping of keys at the top, got {type(values).__name__}")
    apply_overrides(values, overrides)
    values.update(settings or {})
    return from_dict(EvolveConfig, values, str(path))


def config_dict(config: EvolveConfig) -> dict[str, Any]:
    """The config as plain data (what config.yaml and the tracker receive)."""
    data = dataclasses.asdict(config)
    data["genome"]["bounds"] = {k: list(v) for k, v in config.genome.bounds.items()}
    return data


# -- models ----------------------------------------------------------------------------------
def resolve_model(entry: ModelEntry, run_dir: Path, built: Mapping[str, Path]) -> Path:
    """A model's folder: built on the fly under the run folder (``build``), local, or in the HF cache."""
    if entry.build is not None:
        path = run_dir / entry.path
        if not (path / "config.json").is_file():
            _build_tiny(entry, path, built)
        return path
    from cmaam.io.locate import local_model_path

    return local_model_path(entry.path, f"model {entry.name}:").resolve()


def _build_tiny(entry: ModelEntry, path: Path, built: Mapping[str, Path]) -> None:
    from cmaam.testing.tiny import build_tiny_causal_lm, perturb_model

    options = dict(entry.build)
    if "perturb" in options:
        source = built.get(options["perturb"])
        if source is None:
            raise CMAAMError(f"model {entry.name}: build.perturb names {options['perturb']!r}, not an earlier model")
        perturb_model(source, path, float(options.get("scale", 0.3)), int(options.get("seed", 1)))
        return
    with atomic_directory(path, overwrite=True, inputs=()) as folder:
        build_tiny_causal_lm(folder, options.get("type", "llama"), int(options.get("seed", 0)))


def input_paths(config: EvolveConfig) -> list[Path | str | None]:
    """What a search reads from outside its run folder: local models (not built ones), tokenizer, MGSM file."""
    from cmaam.io.locate import local_model_path

    models = [local_model_path(entry.path, f"model {entry.name}:") for entry in config.models if entry.build is None]
    return [*models, config.tokenizer if config.tokenizer and Path(config.tokenizer).exists() else None,
            config.fitness.source if config.fitness.source and Path(config.fitness.source).exists() else None]


def prepare_models(config: EvolveConfig) -> dict[str, Path]:
    """Resolve (and, for tiny presets, build) every model folder."""
    paths: dict[str, Path] = {}
    for entry in config.models:
        paths[entry.name] = resolve_model(entry, config.run_dir, paths)
    return paths


# -- the evaluation log (cache) and state --------------------------------------------------------
def genome_key(genome: Sequence[float]) -> tuple:
    """The cache key of a genome: its values rounded to KEY_DECIMALS."""
    return tuple(round(float(v), KEY_DECIMALS) + 0.0 for v in genome)


class EvaluationLog:
    """Append-only JSONL of every evaluation, fsynced line by line; doubles as the genome cache.

    A line cut by a kill is dropped on load (the file is rewritten without it).
    """

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[tuple[int, int], dict] = {}
        self.cache: dict[tuple, dict] = {}
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            lines = text.split("\n")
            complete, tail = lines[:-1], lines[-1]
            for line in complete:
                if line.strip():
                    self._remember(json.loads(line))
            if tail.strip():
                atomic_write_text(path, "".join(line + "\n" for line in complete if line.strip()))

    def _remember(self, record: dict) -> None:
        self.records[(record["generation"], record["index"])] = record
        self.cache.setdefault(genome_key(record["genome"]), record)

    def lookup(self, genome: Sequence[float]) -> dict | None:
        return self.cache.get(genome_key(genome))

    def append(self, generation: int, index: int, genome: Sequence[float], evaluation: Evaluation | dict,
               cached: bool = False) -> dict:
        if isinstance(evaluation, Evaluation):
            evaluation = dataclasses.asdict(evaluation)
        record = {"generation": generation, "index": index, "fitness": evaluation["fitness"],
                  "metrics": evaluation.get("metrics", {}), "merge_seconds": evaluation.get("merge_seconds", 0.0),
                  "eval_seconds": evaluation.get("eval_seconds", 0.0), "cached": cached,
                  "genome": [float(v) for v in genome]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record, sort_keys=True) + "\n")
            file.flush()
            os.fsync(file.fileno())
        self._remember(record)
        return record

    def best(self) -> dict | None:
        """The highest-fitness record (the earliest among equals)."""
        ordered = sorted(self.records.values(), key=lambda r: (-r["fitness"], r["generation"], r["index"]))
        return ordered[0] if ordered else None


def fingerprint(config: EvolveConfig, layout: GenomeLayout, x0: Sequence[float], population: int) -> str:
    """What a resumed run must share with the original: genome layout, start, bounds, seed, fitness setup."""
    fitness = dataclasses.asdict(config.fitness)
    data = {"labels": layout.labels, "x0": list(x0), "bounds": layout.bounds(), "sigma": config.genome.sigma,
            "seed": config.seed, "population": population, "boundary": config.boundary, "fitness": fitness,
            "method": layout.spec.method, "models": [m.name for m in config.models], "base": config.base_model}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def new_strategy(x0: Sequence[float], sigma: float, layout: GenomeLayout, population: int, seed: int,
                 boundary: str):
    """A CMA-ES whose samples come from our own seeded generator (replayable, no global RNG)."""
    import cma

    generator = np.random.Generator(np.random.PCG64(seed))
    options = {"bounds": list(layout.bounds()), "BoundaryHandler": BOUNDARY_HANDLERS[boundary],
               "popsize": population, "randn": lambda *shape: generator.standard_normal(shape),
               "seed": np.nan, "verbose": -9, "verb_log": 0, "verb_disp": 0, "maxiter": float("inf"),
               "tolfun": 0, "tolx": 0, "tolflatfitness": float("inf"), "tolstagnation": float("inf")}
    return cma.CMAEvolutionStrategy(list(map(float, x0)), float(sigma), options)


def default_population(genes: int) -> int:
    """cma's default population size for ``genes`` dimensions."""
    return 4 + int(3 * math.log(genes))


# -- the search --------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """Where the run folder is, the best genome found and the per-generation summaries."""

    run_dir: Path
    best_genome: list[float]
    best_fitness: float
    history: list[dict]
    evaluated: int  # candidates actually scored in this process (cache hits excluded)


def _summary(generation: int, fitness: list[float], genomes: list[list[float]], es, best: dict, seconds: float,
             evaluated: int, merge_seconds: float, eval_seconds: float) -> dict:
    values = np.asarray(genomes)
    return {
        "generation": generation, "best": max(fitness), "mean": float(np.mean(fitness)),
        "median": float(np.median(fitness)), "worst": min(fitness), "std": float(np.std(fitness)),
        "best_so_far": best["fitness"], "sigma": float(es.sigma), "genome_mean": float(values.mean()),
        "genome_std": float(values.std()), "genome_min": float(values.min()), "genome_max": float(values.max()),
        "evaluated": evaluated, "cached": len(fitness) - evaluated, "seconds": seconds,
        "merge_seconds": merge_seconds, "eval_seconds": eval_seconds,
    }


def _replay(es, state: dict, log: EvaluationLog, population: int) -> list[dict]:
    """Rebuild the optimiser from the finished generations (ask, then tell the logged fitness)."""
    history = list(state.get("generations", []))
    for summary in history:
        generation = summary["generation"]
        asked = es.ask()
        records = [log.records.get((generation, index)) for index in range(population)]
        if any(record is None for record in records):
            raise CMAAMError(f"evaluations.jsonl lacks candidates of finished generation {generation}; "
                             "the run folder is damaged, start a new one")
        logged = np.asarray([record["genome"] for record in records])
        if np.max(np.abs(np.asarray(asked) - logged)) > 1e-6:
            raise CMAAMError(f"replaying generation {generation} gave other candidates than the log; "
                             "the config or the code changed since the run started")
        es.tell(asked, [-record["fitness"] for record in records])
    return history


def run_search(config: EvolveConfig, resume: bool = False) -> SearchResult:
    """Run (or resume) a search; every input is checked before the first candidate is evaluated."""
    with claim_output(config.run_dir, inputs=input_paths(config), overwrite=None):  # one search per run folder
        return _run_search(config, resume)


def _run_search(config: EvolveConfig, resume: bool) -> SearchResult:
    """The body of ``run_search``, run while the run folder is claimed."""
    from cmaam.search.parallel import make_evaluator
    from cmaam.search.monitor import read_state
    from cmaam.io.tracking import default_wandb_mode, start_run

    run_dir = config.run_dir
    state_path = run_dir / "state.json"
    if resume and not state_path.is_file():
        raise CMAAMError(f"{run_dir}: nothing to resume (no state.json)")
    if not resume and state_path.is_file():
        raise CMAAMError(f"{run_dir}: already holds a search; pass --resume to continue it or choose another "
                         "--output-dir")

    # --- every check that can fail, before any evaluation --------------------------------------
    build_fitness_here, layout, x0, paths = prepare(config)
    population = int(config.population or default_population(len(layout)))
    print_fingerprint = fingerprint(config, layout, x0, population)
    state = read_state(run_dir) if resume else {}
    if resume and state.get("fingerprint") != print_fingerprint:
        raise CMAAMError(f"{run_dir}: state.json was written for a different config (genome, start, seed, "
                         "population or fitness changed); only generations may change on --resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    log = EvaluationLog(run_dir / "evaluations.jsonl")
    es = new_strategy(x0, config.genome.sigma, layout, population, config.seed, config.boundary)
    history = _replay(es, state, log, population)

    if not resume:
        _write_state(state_path, print_fingerprint, history, log, layout, es, population, config, done=False)

    wandb_mode = config.wandb_mode or default_wandb_mode()
    evaluator = make_evaluator(build_fitness_here, config.workers, config.ray_address, config.gpus_per_worker)
    evaluated_here = 0
    try:
        with start_run(run_dir.name, config_dict(config), root=run_dir.parent, wandb_mode=wandb_mode,
                       group="evolve") as run:
            for generation in range(len(history), int(config.generations)):
                started = time.perf_counter()
                genomes = [[float(v) for v in x] for x in es.ask()]
                results, evaluated = _evaluate_generation(generation, genomes, log, evaluator, config)
                evaluated_here += evaluated
                fitness = [results[index]["fitness"] for index in range(population)]
                es.tell(genomes, [-value for value in fitness])
                fresh = [record for record in results.values() if not record["cached"]]
                summary = _summary(generation, fitness, genomes, es, log.best(), time.perf_counter() - started,
                                   len(fresh), sum(r["merge_seconds"] for r in fresh),
                                   sum(r["eval_seconds"] for r in fresh))
                history.append(summary)
                _write_state(state_path, print_fingerprint, history, log, layout, es, population, config, done=False)
                run.log({f"fitness/{k}": summary[k] for k in ("best", "mean", "median", "worst", "std", "best_so_far")}
                        | {f"genome/{k[7:]}": summary[k] for k in summary if k.startswith("genome_")}
                        | {"sigma": summary["sigma"], "seconds": summary["seconds"]}, step=generation)
                if config.figure_every and (generation + 1) % int(config.figure_every) == 0:
                    _save_figures(run, history, layout, log.best()["genome"], es.mean)
                if config.progress:
                    print(f"generation {generation + 1}/{config.generations}: best {summary['best']:.6g} "
                          f"mean {summary['mean']:.6g} best so far {summary['best_so_far']:.6g}", flush=True)
            best = log.best()
            _save_figures(run, history, layout, best["genome"], es.mean)
            _finish(run, config, layout, paths, best, history, population)
            _write_state(state_path, print_fingerprint, history, log, layout, es, population, config, done=True)
    finally:
        evaluator.close()
    return SearchResult(run_dir, best["genome"], best["fitness"], history, evaluated_here)


def _evaluate_generation(generation: int, genomes: list[list[float]], log: EvaluationLog, evaluator,
                         config: EvolveConfig) -> tuple[dict[int, dict], int]:
    """Score one generation: candidates already in the log (this generation before a kill, or the same
    genome earlier) are taken from it, the rest go to the evaluator. Returns records by index and the
    number actually scored."""
    from tqdm import tqdm

    results: dict[int, dict] = {}
    jobs = []
    for index, genome in enumerate(genomes):
        record = log.records.get((generation, index))
        if record is None and (hit := log.lookup(genome)) is not None:
            record = log.append(generation, index, genome, hit, cached=True)
        if record is not None:
            results[index] = record
        else:
            jobs.append((index, genome))
    with tqdm(total=len(genomes), initial=len(results), unit="candidate", leave=False, disable=not config.progress,
              desc=f"generation {generation + 1}/{config.generations}") as bar:
        for index, evaluation in evaluator.map(jobs):
            results[index] = log.append(generation, index, genomes[index], evaluation)
            bar.update(1)
            bar.set_postfix(best=f"{max(r['fitness'] for r in results.values()):.4g}")
    return results, len(jobs)


def prepare(config: EvolveConfig) -> tuple[functools.partial, GenomeLayout, list[float], dict[str, Path]]:
    """Resolve models, check shapes and genome, load the MGSM subset: the fitness builder and start genome.

    The builder is ``build_fitness`` with every argument bound (picklable: each Ray worker calls it).
    """
    paths = prepare_models(config)
    readers = open_readers(paths, config.allow_pickle)
    try:
        layout = plan_layout(readers, config.base_model, config.genome)
    finally:
        for reader in readers.values():
            reader.close()
    x0 = layout.initial()
    fitness, items = config.fitness, []
    if fitness.type == "synthetic":
        if fitness.target is None:
            raise CMAAMError("fitness.target is required for the synthetic fitness (a number or a full genome)")
        target = fitness.target if isinstance(fitness.target, list) else [float(fitness.target)] * len(layout)
        layout.check_genome(target, "fitness.target")
        fitness = dataclasses.replace(fitness, target=[float(v) for v in target])
    else:
        from eval.mgsm import load_mgsm

        loaded = load_mgsm(fitness.source, lang=fitness.lang)
        items = loaded[int(fitness.offset):][:fitness.limit]
        if not items:
            raise CMAAMError(f"MGSM subset is empty (offset {fitness.offset} of {len(loaded)} items)")
    build = functools.partial(build_fitness, fitness, {k: str(v) for k, v in paths.items()}, config.base_model,
                              config.genome, config.options, items, config.tokenizer)
    return build, layout, x0, paths


def _write_state(path: Path, fingerprint_: str, history: list[dict], log: EvaluationLog, layout: GenomeLayout, es,
                 population: int, config: EvolveConfig, done: bool) -> None:
    best = log.best()
    atomic_write_json(path, {
        "format": STATE_FORMAT, "fingerprint": fingerprint_, "name": config.name, "population": population,
        "genes": len(layout), "generations_planned": int(config.generations), "done": done,
        "generations": history,
        "best": {k: best[k] for k in ("fitness", "generation", "index", "genome")} if best else None,
        "mean_genome": [float(v) for v in es.mean], "sigma": float(es.sigma),
    })


def _save_figures(run, history: list[dict], layout: GenomeLayout, best: Sequence[float], mean: Sequence[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmaam.search.monitor import plot_convergence, plot_genome

    for name, figure in (("convergence", plot_convergence(history)), ("genome", plot_genome(layout, best, mean))):
        run.save_figure(figure, name)
        plt.close(figure)


def _finish(run, config: EvolveConfig, layout: GenomeLayout, paths: Mapping[str, Path], best: dict,
            history: list[dict], population: int) -> None:
    """Write the best genome (JSON and mergekit YAML), the summary, and the best model."""
    from cmaam.search.recipe import genome_to_mergekit
    from cmaam.merging.config_merge import merge_from_config

    run_dir = config.run_dir
    genome = layout.clip(best["genome"])
    atomic_write_json(run_dir / "best_genome.json", {
        "fitness": best["fitness"], "generation": best["generation"], "index": best["index"],
        "metrics": best.get("metrics", {}), "genome": genome, "genes": layout.as_table(genome),
    })
    stored = _stored_dtype(paths[config.base_model], layout.tensor_names[0])
    recipe = genome_to_mergekit(layout, genome, {name: str(path) for name, path in paths.items()}, dtype=stored,
                                out_dtype=config.dtype)
    recipe_path = atomic_write_yaml(run_dir / "merge_config.yaml", recipe)
    summary = {"best_fitness": best["fitness"], "best_generation": best["generation"],
               "generations": len(history), "evaluations": sum(h["evaluated"] for h in history),
               "genes": len(layout), "population": population, "seed": config.seed, "recipe": str(recipe_path)}
    summary.update({f"best_{k}": v for k, v in best.get("metrics", {}).items()})
    if config.save_model:
        merge_from_config(recipe_path, run_dir / "best_model", dataclasses.replace(config.options, overwrite=True))
        summary["best_model"] = str(run_dir / "best_model")
    run.log_summary(summary)


def _stored_dtype(path: Path, name: str) -> str:
    from cmaam.io import CheckpointReader

    with CheckpointReader(path) as reader:
        return str(reader.dtype(name)).replace("torch.", "")
