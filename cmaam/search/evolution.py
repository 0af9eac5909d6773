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
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from cmaam.core.config import InvalidValue, apply_overrides, at_least, from_dict, one_of, read_yaml, setting
from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from cmaam.core.presets import preset_folder
from cmaam.io.atomic import atomic_directory, atomic_write_json, atomic_write_text, atomic_write_yaml, claim_output
from cmaam.search.dataflow import DataFlowLayout, DataFlowSpec, plan_dataflow
from cmaam.search.fitness import ITEM_SCORES, Evaluation, FitnessConfig, build_fitness
from cmaam.search.genome import GenomeLayout, GenomeSpec
from cmaam.search.inmemory import open_readers, plan_layout
from cmaam.search.subset import SubsetPlan, SubsetSpec, select_subset
from cmaam.search.vlm import AlphaLayout, AlphaSearchSpec, plan_alpha_layout

STATE_FORMAT = 1
KEY_DECIMALS = 10  # genomes equal to 1e-10 share one cache entry
BOUNDARY_HANDLERS = {"transform": "BoundTransform", "penalty": "BoundPenalty"}
PRESET_FOLDER = preset_folder("evolve")
SPACES = ("parameter", "dataflow", "alphas")  # merge coefficients, an inference path, or a VLM pair's CMAAM alphas
SearchLayout = GenomeLayout | DataFlowLayout | AlphaLayout  # each offers labels, bounds, initial, clip, as_table, sigma
# FitnessConfig fields added after runs existed: left out of the resume fingerprint while at their defaults
LATER_FITNESS_FIELDS = {"subset": None, "split": "val", "retention": None, "retention_limit": None,
                        "weights": {"target": 1.0, "retention": 1.0}}


# -- configuration ---------------------------------------------------------------------------
@dataclass
class ModelEntry:
    """One input model: a local folder or a hub id already in the HF cache; ``build`` makes it on first use
    (a tiny model, a perturbed copy, or a mergekit merge of earlier models: the PS part of PS+DFS)."""

    name: str
    path: str
    build: dict[str, Any] | None = None  # {type: llama, seed: 0} | {perturb: other, scale: 0.3} | {merge: {...}}


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
    space: str = setting("parameter", check=one_of(SPACES))  # what the genome describes
    genome: GenomeSpec | None = None  # space: parameter (default: GenomeSpec())
    dataflow: DataFlowSpec | None = None  # space: dataflow (default: DataFlowSpec())
    alphas: AlphaSearchSpec | None = None  # space: alphas (default: AlphaSearchSpec())
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

    def __post_init__(self) -> None:
        """The configured space's section takes its defaults when the YAML leaves it out."""
        section = {"parameter": ("genome", GenomeSpec), "dataflow": ("dataflow", DataFlowSpec),
                   "alphas": ("alphas", AlphaSearchSpec)}.get(self.space)
        if section is not None and getattr(self, section[0]) is None:
            setattr(self, section[0], section[1]())

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
        sections = {"parameter": "genome", "dataflow": "dataflow", "alphas": "alphas"}
        for space, section in sections.items():
            if space != self.space and getattr(self, section) is not None:
                raise InvalidValue(section, f"configures space: {space}, but space is {self.space}")
        if (self.space == "alphas") != (self.fitness.type == "vqa"):
            raise InvalidValue("fitness", f"the vqa fitness and space: alphas go together (a VLM pair scored with "
                                          f"images), got space {self.space} with fitness {self.fitness.type}")

    @property
    def space_spec(self) -> GenomeSpec | DataFlowSpec | AlphaSearchSpec:
        """The section of the configured space."""
        return {"parameter": self.genome, "dataflow": self.dataflow, "alphas": self.alphas}[self.space]


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
    if config.genome is not None:
        data["genome"]["bounds"] = {k: list(v) for k, v in config.genome.bounds.items()}
    for section in ("dataflow", "alphas"):
        if data.get(section) is not None:
            data[section]["scale_bounds"] = list(data[section]["scale_bounds"])
    for key, default in LATER_FITNESS_FIELDS.items():
        if data["fitness"].get(key) == default:
            data["fitness"].pop(key)
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
    if "merge" in options:
        _build_merge(entry, options, path, built)
        return
    if "perturb" in options:
        source = built.get(options["perturb"])
        if source is None:
            raise CMAAMError(f"model {entry.name}: build.perturb names {options['perturb']!r}, not an earlier model")
        perturb_model(source, path, float(options.get("scale", 0.3)), int(options.get("seed", 1)))
        return
    with atomic_directory(path, overwrite=True, inputs=()) as folder:
        build_tiny_causal_lm(folder, options.get("type", "llama"), int(options.get("seed", 0)))


def _build_merge(entry: ModelEntry, options: dict, path: Path, built: Mapping[str, Path]) -> None:
    """``build: {merge: CONFIG}``: run a mergekit config whose model names refer to earlier models."""
    from cmaam.merging.config_merge import merge_from_config

    recipe = options["merge"]
    if not isinstance(recipe, Mapping) or set(options) != {"merge"}:
        raise CMAAMError(f"model {entry.name}: build.merge must be a mergekit config mapping (and the only build key)")

    def resolve(value: Any, key: str | None = None) -> Any:
        if isinstance(value, Mapping):
            return {k: resolve(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, key) for v in value]
        if key in ("model", "base_model") and isinstance(value, str):
            if value not in built:
                raise CMAAMError(f"model {entry.name}: build.merge names {value!r}, not an earlier model")
            return str(built[value])
        if key == "models" and isinstance(value, str):  # models: [name, ...] shorthand
            return resolve({"model": value})
        return value

    recipe_path = atomic_write_yaml(path.parent / f"{path.name}.merge.yaml", resolve(recipe))
    merge_from_config(recipe_path, path, ExecutionOptions(overwrite=True, progress=False))


def input_paths(config: EvolveConfig) -> list[Path | str | None]:
    """What a search reads from outside its run folder: local models (not built ones), tokenizer, data."""
    from cmaam.io.locate import local_model_path

    models = [local_model_path(entry.path, f"model {entry.name}:") for entry in config.models if entry.build is None]
    files = (config.tokenizer, config.fitness.source, config.fitness.retention)
    return [*models, *(path if path and Path(path).exists() else None for path in files)]


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

    def __init__(self, path: Path, key: Callable[[Sequence[float]], tuple] = genome_key, keep_items: bool = False):
        self.path = path
        self.key = key  # genomes with equal keys share one evaluation (data-flow: the decoded path)
        self.keep_items = keep_items  # store per-item scores (the subset calibration needs them)
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
        self.cache.setdefault((record.get("items", "full"), self.key(record["genome"])), record)

    def lookup(self, genome: Sequence[float], items: str = "full") -> dict | None:
        """An earlier record of an equal genome scored on the same items ("full" or "subset")."""
        return self.cache.get((items, self.key(genome)))

    def append(self, generation: int, index: int, genome: Sequence[float], evaluation: Evaluation | dict,
               cached: bool = False, items: str = "full") -> dict:
        if isinstance(evaluation, Evaluation):
            evaluation = dataclasses.asdict(evaluation)
        record = {"generation": generation, "index": index, "fitness": evaluation["fitness"],
                  "metrics": evaluation.get("metrics", {}), "merge_seconds": evaluation.get("merge_seconds", 0.0),
                  "eval_seconds": evaluation.get("eval_seconds", 0.0), "cached": cached,
                  "genome": [float(v) for v in genome]}
        if items != "full":
            record["items"] = items
        if self.keep_items and evaluation.get("item_scores") is not None:
            record["item_scores"] = [float(v) for v in evaluation["item_scores"]]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record, sort_keys=True) + "\n")
            file.flush()
            os.fsync(file.fileno())
        self._remember(record)
        return record


def fingerprint(config: EvolveConfig, layout: SearchLayout, x0: Sequence[float], population: int) -> str:
    """What a resumed run must share with the original: genome layout, start, bounds, seed, fitness setup."""
    fitness = dataclasses.asdict(config.fitness)
    for key, default in LATER_FITNESS_FIELDS.items():  # runs started before these existed keep their fingerprint
        if fitness.get(key) == default:
            fitness.pop(key)
    data = {"labels": layout.labels, "x0": list(x0), "bounds": layout.bounds(), "sigma": layout.sigma,
            "seed": config.seed, "population": population, "boundary": config.boundary, "fitness": fitness,
            "method": layout.spec.method if isinstance(layout, GenomeLayout) else "dataflow",
            "models": [m.name for m in config.models], "base": config.base_model}
    if isinstance(layout, (DataFlowLayout, AlphaLayout)):
        data[layout.describe()["space"]] = layout.describe()
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def new_strategy(x0: Sequence[float], sigma: float, layout: SearchLayout, population: int, seed: int,
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
    subset = config.fitness.subset
    log = EvaluationLog(run_dir / "evaluations.jsonl", cache_key(layout), keep_items=subset is not None)
    rescored = EvaluationLog(run_dir / "rescored.jsonl", cache_key(layout)) if subset else None
    es = new_strategy(x0, layout.sigma, layout, population, config.seed, config.boundary)
    history = _replay(es, state, log, population)
    plan = _subset_plan(run_dir, log, subset, population) if subset and history else None

    if not resume:
        _write_state(state_path, print_fingerprint, history, best_record(log, rescored), layout, es, population,
                     config, done=False)
    keywords = build_fitness_here.keywords
    items = len(keywords["items"]) + len(keywords["retention_items"])  # scored per full evaluation

    wandb_mode = config.wandb_mode or default_wandb_mode()
    evaluator = make_evaluator(build_fitness_here, config.workers, config.ray_address, config.gpus_per_worker)
    evaluated_here = 0
    try:
        with start_run(run_dir.name, config_dict(config), root=run_dir.parent, wandb_mode=wandb_mode,
                       group="evolve") as run:
            for generation in range(len(history), int(config.generations)):
                started = time.perf_counter()
                if subset and generation >= 1 and plan is None:  # the first generation calibrates the subset
                    plan = _subset_plan(run_dir, log, subset, population)
                genomes = [[float(v) for v in x] for x in es.ask()]
                results, evaluated = _evaluate_generation(generation, genomes, log, evaluator, config, plan)
                evaluated_here += evaluated
                fitness = [results[index]["fitness"] for index in range(population)]
                es.tell(genomes, [-value for value in fitness])
                fresh = [record for record in results.values() if not record["cached"]]
                if plan is not None:
                    rescores, count = _rescore(generation, genomes, results, log, rescored, evaluator, subset)
                    evaluated_here += count
                    fresh += [record for record in rescores if not record["cached"]]
                summary = _summary(generation, fitness, genomes, es, best_record(log, rescored),
                                   time.perf_counter() - started, len(fresh), sum(r["merge_seconds"] for r in fresh),
                                   sum(r["eval_seconds"] for r in fresh))
                summary["item_evaluations"] = sum(len(plan.items) if r.get("items") == "subset" else items
                                                  for r in fresh)
                history.append(summary)
                _write_state(state_path, print_fingerprint, history, best_record(log, rescored), layout, es,
                             population, config, done=False)
                run.log({f"fitness/{k}": summary[k] for k in ("best", "mean", "median", "worst", "std", "best_so_far")}
                        | {f"genome/{k[7:]}": summary[k] for k in summary if k.startswith("genome_")}
                        | {"sigma": summary["sigma"], "seconds": summary["seconds"]}, step=generation)
                if config.figure_every and (generation + 1) % int(config.figure_every) == 0:
                    _save_figures(run, history, layout, best_record(log, rescored)["genome"], es.mean)
                if config.progress:
                    print(f"generation {generation + 1}/{config.generations}: best {summary['best']:.6g} "
                          f"mean {summary['mean']:.6g} best so far {summary['best_so_far']:.6g}", flush=True)
            best = best_record(log, rescored)
            _save_figures(run, history, layout, best["genome"], es.mean)
            _finish(run, config, layout, paths, best, history, population)
            _write_state(state_path, print_fingerprint, history, best, layout, es, population, config, done=True)
    finally:
        evaluator.close()
    return SearchResult(run_dir, best["genome"], best["fitness"], history, evaluated_here)


def _evaluate_generation(generation: int, genomes: list[list[float]], log: EvaluationLog, evaluator,
                         config: EvolveConfig, plan: SubsetPlan | None = None) -> tuple[dict[int, dict], int]:
    """Score one generation: candidates already in the log (this generation before a kill, or the same
    genome earlier) are taken from it, the rest go to the evaluator (on the subset's items when ``plan``
    is given, the fitness then being the subset estimate). Returns records by index and the number scored."""
    from tqdm import tqdm

    kind = "full" if plan is None else "subset"
    results: dict[int, dict] = {}
    jobs = []
    for index, genome in enumerate(genomes):
        record = log.records.get((generation, index))
        if record is None and (hit := log.lookup(genome, kind)) is not None:
            record = log.append(generation, index, genome, hit, cached=True, items=kind)
        if record is not None:
            results[index] = record
        else:
            jobs.append((index, genome))
    with tqdm(total=len(genomes), initial=len(results), unit="candidate", leave=False, disable=not config.progress,
              desc=f"generation {generation + 1}/{config.generations}") as bar:
        for index, evaluation in evaluator.map(jobs, None if plan is None else plan.items):
            if plan is not None:
                evaluation.metrics["subset_fitness"] = evaluation.fitness
                evaluation.fitness = plan.estimate(evaluation.fitness)
            results[index] = log.append(generation, index, genomes[index], evaluation, items=kind)
            bar.update(1)
            bar.set_postfix(best=f"{max(r['fitness'] for r in results.values()):.4g}")
    return results, len(jobs)


def _subset_plan(run_dir: Path, log: EvaluationLog, spec: SubsetSpec, population: int) -> SubsetPlan:
    """The item subset, chosen from the first generation's per-item scores (a pure function of the log, so a
    resumed run chooses the same one); also written to subset.json."""
    records = [log.records.get((0, index)) for index in range(population)]
    if any(record is None or record.get("item_scores") is None for record in records):
        raise CMAAMError("fitness.subset: the first generation lacks per-item scores; the run folder was "
                         "started without fitness.subset")
    plan = select_subset([record["item_scores"] for record in records], spec)
    atomic_write_json(run_dir / "subset.json", plan.to_json())
    return plan


def _rescore(generation: int, genomes: list[list[float]], results: dict[int, dict], log: EvaluationLog,
             rescored: EvaluationLog, evaluator, spec: SubsetSpec) -> tuple[list[dict], int]:
    """Score the generation's ``spec.rescore_top`` best candidates (by subset estimate) on the full set."""
    top = sorted(results, key=lambda index: (-results[index]["fitness"], index))[:spec.rescore_top]
    records, jobs = [], []
    for index in top:
        record = rescored.records.get((generation, index))
        if record is None:
            hit = rescored.lookup(genomes[index]) or log.lookup(genomes[index], "full")
            if hit is not None:
                record = rescored.append(generation, index, genomes[index], hit, cached=True)
        if record is not None:
            records.append(record)
        else:
            jobs.append((index, genomes[index]))
    for index, evaluation in evaluator.map(jobs):
        records.append(rescored.append(generation, index, genomes[index], evaluation))
    return records, len(jobs)


def best_record(log: EvaluationLog, rescored: EvaluationLog | None = None) -> dict | None:
    """The best candidate scored on the full item set: every record without a subset, else the first
    generation's and the rescored ones (the earliest among equals)."""
    records = [r for r in log.records.values() if r.get("items", "full") == "full"]
    if rescored is not None:
        records += list(rescored.records.values())
    ordered = sorted(records, key=lambda r: (-r["fitness"], r["generation"], r["index"]))
    return ordered[0] if ordered else None


def cache_key(layout: SearchLayout) -> Callable[[Sequence[float]], tuple]:
    """The evaluation-cache key of a layout's genomes: the decoded path for data-flow genomes, else the values."""
    return layout.cache_key if isinstance(layout, DataFlowLayout) else genome_key


def plan_search_layout(readers: Mapping, config: EvolveConfig) -> SearchLayout:
    """The genome layout of the configured search space, checked against the models' headers."""
    if config.space == "dataflow":
        return plan_dataflow(readers, config.base_model, config.dataflow)
    if config.space == "alphas":
        return plan_alpha_layout(readers, config.base_model, config.alphas, config.options)
    return plan_layout(readers, config.base_model, config.genome)


def prepare(config: EvolveConfig) -> tuple[functools.partial, SearchLayout, list[float], dict[str, Path]]:
    """Resolve models, check shapes and genome, load the items: the fitness builder and start genome.

    The builder is ``build_fitness`` with every argument bound (picklable: each Ray worker calls it); its
    ``items`` and ``retention_items`` keywords are the scored items.
    """
    paths = prepare_models(config)
    readers = open_readers(paths, config.allow_pickle)
    try:
        layout = plan_search_layout(readers, config)
    finally:
        for reader in readers.values():
            reader.close()
    x0 = layout.initial()
    fitness, items, retention = config.fitness, [], []
    if fitness.type == "synthetic":
        if fitness.target is None:
            raise CMAAMError("fitness.target is required for the synthetic fitness (a number or a full genome)")
        target = fitness.target if isinstance(fitness.target, list) else [float(fitness.target)] * len(layout)
        layout.check_genome(target, "fitness.target")
        fitness = dataclasses.replace(fitness, target=[float(v) for v in target])
    elif fitness.type == "vqa":
        from cmaam.search.vlm import load_vqa_items

        items = load_vqa_items(fitness.source, fitness.split, fitness.limit, "fitness.source")
        if fitness.retention:
            retention = load_vqa_items(fitness.retention, fitness.split, fitness.retention_limit or fitness.limit,
                                       "fitness.retention")
        elif fitness.weights.get("retention"):
            raise CMAAMError("fitness.retention is not set but fitness.weights.retention is not 0")
    else:
        from eval.mgsm import load_mgsm

        loaded = load_mgsm(fitness.source, lang=fitness.lang)
        items = loaded[int(fitness.offset):][:fitness.limit]
        if not items:
            raise CMAAMError(f"MGSM subset is empty (offset {fitness.offset} of {len(loaded)} items)")
    if fitness.subset is not None:
        if fitness.type == "mgsm" and fitness.metric not in ITEM_SCORES:
            raise CMAAMError(f"fitness.subset: metric {fitness.metric!r} has no per-item score "
                             f"(use {', '.join(ITEM_SCORES)})")
        if fitness.subset.size >= len(items) + len(retention):
            raise CMAAMError(f"fitness.subset.size {fitness.subset.size} must be smaller than the "
                             f"{len(items) + len(retention)} items of the fitness")
    space = layout if isinstance(layout, AlphaLayout) else config.space_spec
    build = functools.partial(build_fitness, fitness, {k: str(v) for k, v in paths.items()}, config.base_model,
                              space, config.options, items=items, tokenizer=config.tokenizer,
                              retention_items=retention)
    return build, layout, x0, paths


def _write_state(path: Path, fingerprint_: str, history: list[dict], best: dict | None, layout: SearchLayout, es,
                 population: int, config: EvolveConfig, done: bool) -> None:
    atomic_write_json(path, {
        "format": STATE_FORMAT, "fingerprint": fingerprint_, "name": config.name, "population": population,
        "genes": len(layout), "generations_planned": int(config.generations), "done": done,
        "generations": history,
        "best": {k: best[k] for k in ("fitness", "generation", "index", "genome")} if best else None,
        "mean_genome": [float(v) for v in es.mean], "sigma": float(es.sigma),
    })


def _save_figures(run, history: list[dict], layout: SearchLayout, best: Sequence[float], mean: Sequence[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")

    from cmaam.search.dataflow import plot_path
    from cmaam.search.monitor import plot_convergence, plot_genome
    from cmaam.search.vlm import plot_alphas

    if isinstance(layout, DataFlowLayout):
        genome = ("path", plot_path(layout, best))
    elif isinstance(layout, AlphaLayout):
        genome = ("alphas", plot_alphas(layout, best))
    else:
        genome = ("genome", plot_genome(layout, best, mean))
    for name, figure in (("convergence", plot_convergence(history)), genome):
        run.save_figure(figure, name)


def _finish(run, config: EvolveConfig, layout: SearchLayout, paths: Mapping[str, Path], best: dict,
            history: list[dict], population: int) -> None:
    """Write the best genome (JSON and mergekit YAML), the summary, and the best model."""
    run_dir = config.run_dir
    genome = layout.clip(best["genome"])
    record = {"fitness": best["fitness"], "generation": best["generation"], "index": best["index"],
              "metrics": best.get("metrics", {}), "genome": genome, "genes": layout.as_table(genome)}
    model_paths = {name: str(path) for name, path in paths.items()}
    summary = {"best_fitness": best["fitness"], "best_generation": best["generation"],
               "generations": len(history), "evaluations": sum(h["evaluated"] for h in history),
               "genes": len(layout), "population": population, "seed": config.seed,
               "item_evaluations": sum(h.get("item_evaluations", 0) for h in history),
               "scoring_seconds": sum(h["merge_seconds"] + h["eval_seconds"] for h in history)}
    if isinstance(layout, DataFlowLayout):
        write_model = _finish_dataflow(config, layout, genome, model_paths, record, summary)
    elif isinstance(layout, AlphaLayout):
        write_model = _finish_alphas(config, layout, genome, model_paths, record, summary)
    else:
        write_model = _finish_parameter(config, layout, genome, model_paths, summary)
    atomic_write_json(run_dir / "best_genome.json", record)
    summary.update({f"best_{k}": v for k, v in best.get("metrics", {}).items()})
    if config.save_model:
        write_model(run_dir / "best_model")
        summary["best_model"] = str(run_dir / "best_model")
    run.log_summary(summary)


def _finish_parameter(config: EvolveConfig, layout: GenomeLayout, genome: list[float], model_paths: dict,
                      summary: dict) -> Callable[[Path], Path]:
    """merge_config.yaml of a parameter-space genome; returns the function that writes the model."""
    from cmaam.merging.config_merge import merge_from_config
    from cmaam.search.recipe import genome_to_mergekit

    stored = _stored_dtype(Path(model_paths[config.base_model]), layout.tensor_names[0])
    recipe = genome_to_mergekit(layout, genome, model_paths, dtype=stored, out_dtype=config.dtype)
    recipe_path = atomic_write_yaml(config.run_dir / "merge_config.yaml", recipe)
    summary["recipe"] = str(recipe_path)
    return lambda output: merge_from_config(recipe_path, output, dataclasses.replace(config.options, overwrite=True))


def _finish_alphas(config: EvolveConfig, layout: AlphaLayout, genome: list[float], model_paths: dict,
                   record: dict, summary: dict) -> Callable[[Path], Path]:
    """The best per-group alphas (beside CMAAM's) and the mergekit recipe that writes the merge."""
    from cmaam.merging.config_merge import merge_from_config
    from cmaam.search.vlm import alphas_to_mergekit

    stored = _stored_dtype(Path(model_paths[layout.target]), next(iter(layout.tensor_group)))
    recipe_path = atomic_write_yaml(config.run_dir / "merge_config.yaml",
                                    alphas_to_mergekit(layout, genome, model_paths, dtype=stored))
    record["alphas"] = layout.group_alphas(genome)
    record["cmaam_alphas"] = dict(layout.start)
    summary["recipe"] = str(recipe_path)
    return lambda output: merge_from_config(recipe_path, output, dataclasses.replace(config.options, overwrite=True))


def _finish_dataflow(config: EvolveConfig, layout: DataFlowLayout, genome: list[float], model_paths: dict,
                     record: dict, summary: dict) -> Callable[[Path], Path]:
    """The best path (in best_genome.json), its passthrough merge_config.yaml and how its scales are folded."""
    from cmaam.io import CheckpointReader
    from cmaam.search.dataflow import path_table
    from cmaam.search.dataflow_export import dataflow_to_mergekit, plan_fold, write_dataflow_model

    steps = layout.decode(genome)
    configs = {}
    for name, path in model_paths.items():
        with CheckpointReader(path) as reader:
            configs[name] = reader.config
    fold = plan_fold(steps, configs)
    first = configs[steps[0].model]
    with CheckpointReader(model_paths[steps[0].model]) as reader:
        stored = str(reader.dtype(next(n for n in reader.keys() if reader.dtype(n).is_floating_point)))
    recipe = dataflow_to_mergekit(steps, model_paths, fold, dtype=stored.replace("torch.", ""))
    if config.dtype and config.dtype != recipe["dtype"]:
        recipe["out_dtype"] = config.dtype
    recipe_path = atomic_write_yaml(config.run_dir / "merge_config.yaml", recipe)
    record["path"] = path_table(steps)
    record["fold"] = {"kind": fold.kind, "reason": fold.reason, "input_scales": fold.input_scales}
    summary.update(recipe=str(recipe_path), path_length=len(steps), fold=fold.kind)
    return lambda output: write_dataflow_model(recipe_path, fold, output, first["model_type"],
                                               dataclasses.replace(config.options, overwrite=True))


def _stored_dtype(path: Path, name: str) -> str:
    from cmaam.io import CheckpointReader

    with CheckpointReader(path) as reader:
        return str(reader.dtype(name)).replace("torch.", "")
