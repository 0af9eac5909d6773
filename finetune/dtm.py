"""``python -m finetune.dtm``: Disperse-Then-Merge (Fu et al., ACL 2024) against a single fine-tune on all the data.

The training split is dispersed into K parts (by a category field, or by k-means over question
embeddings), one LoRA sub-model is trained per part with ``finetune.lora_vqa`` (every flag it knows can
be passed through), and the sub-models are merged: a uniform soup by default, or any registered merge
method with the base as base model and weight 1/K per sub-model. The merge, the single fine-tune on all
the data, the sub-models and the base are then evaluated on the test split (and an English retention
set). Writes OUTPUT/parts/, OUTPUT/submodels/part_k/, OUTPUT/single/, OUTPUT/dtm/ (the merged model) and
the table OUTPUT/dtm.md (+ dtm.json, dtm.png). A rerun skips every finished step.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cmaam.core.cli import run_cli
from cmaam.core.errors import CMAAMError
from cmaam.core.options import ExecutionOptions
from finetune.lora_vqa import TrainingSettings

SPLITS = ("category", "cluster")
PARTS_FILE = "parts.json"


@dataclass
class DTMConfig:
    """A DTM run: the base, the data, how it is dispersed and merged, and how every model is trained."""

    model: str
    data: str
    output: str
    training: TrainingSettings = field(default_factory=TrainingSettings)  # the sub-models' and the single run's
    parts: int = 3
    split: str = "category"
    category_field: str = "category"
    merge: str = "soup"  # soup, or a registered merge method (task_arithmetic, ties, dare_ties, ...)
    merge_parameters: dict[str, Any] = field(default_factory=dict)  # e.g. {density: 0.5} for ties
    merge_weight: float | None = None  # weight of each sub-model in a method merge; default 1/K
    retention: str | None = None  # English VQA folder (test.jsonl) for the retention column
    single: bool = True  # also fine-tune once on all the data (the baseline)
    evaluate: bool = True  # evaluate on the test split (the experiment pipeline evaluates its own way)
    evaluate_parts: bool = True
    eval_limit: int | None = None
    eval_batch_size: int = 16
    max_new_tokens: int = 16
    seed: int = 0
    threads: int | None = None  # torch threads of the trainings
    wandb_mode: str = "disabled"  # tracking of the trainings
    progress: bool = True

    def validate(self) -> None:
        """One-line errors before any work."""
        from cmaam.merging.methods import get_method

        if isinstance(self.parts, bool) or not isinstance(self.parts, int) or self.parts < 2:
            raise CMAAMError(f"--parts must be a whole number of at least 2, got {self.parts!r}")
        self.training.validate()
        if self.split not in SPLITS:
            raise CMAAMError(f"--split must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.merge != "soup":
            get_method(self.merge)  # one-line error for an unknown method
        elif self.merge_parameters or self.merge_weight is not None:
            raise CMAAMError("--merge-parameter and --merge-weight apply to a merge method, not the soup")
        for path, what in ((self.model, "model"), (self.data, "data")):
            if not Path(path).is_dir():
                raise CMAAMError(f"{path}: {what} folder not found")
        for split in ("train", "test") if self.evaluate else ("train",):
            if not (Path(self.data) / f"{split}.jsonl").is_file():
                raise CMAAMError(f"{self.data}: no {split}.jsonl")
        if self.retention and not (Path(self.retention) / "test.jsonl").is_file():
            raise CMAAMError(f"{self.retention}: no test.jsonl for the retention set")


# -- dispersing the data ----------------------------------------------------------------------------
def read_records(path: Path) -> list[dict]:
    """The raw JSON records of a VQA JSONL file, with image paths made absolute (so a part can live elsewhere)."""
    from eval.vqa import load_vqa_jsonl

    load_vqa_jsonl(path)  # the same one-line errors as training would give, before anything is written
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            if isinstance(record.get("image"), str) and not Path(record["image"]).is_absolute():
                record["image"] = str((path.parent / record["image"]).resolve())
            records.append(record)
    return records


def split_by_category(records: Sequence[dict], parts: int, field_name: str = "category") -> list[int]:
    """Part of each record: whole categories, balanced by size (largest category first to the smallest part,
    ties by name and part index). Needs at least ``parts`` categories."""
    counts: dict[str, int] = {}
    for record in records:
        if field_name not in record:
            raise CMAAMError(f"--category-field {field_name!r}: a training record has no such field")
        counts[str(record[field_name])] = counts.get(str(record[field_name]), 0) + 1
    if len(counts) < parts:
        raise CMAAMError(f"--parts {parts} but the data has only {len(counts)} {field_name} value(s) "
                         f"({', '.join(sorted(counts))}); use fewer parts or --split cluster")
    sizes = [0] * parts
    assignment = {}
    for category in sorted(counts, key=lambda c: (-counts[c], c)):
        target = min(range(parts), key=lambda k: (sizes[k], k))
        assignment[category] = target
        sizes[target] += counts[category]
    return [assignment[str(record[field_name])] for record in records]


def kmeans(points: np.ndarray, clusters: int, seed: int = 0, iterations: int = 100) -> np.ndarray:
    """Seeded k-means (k-means++ start, Lloyd iterations); an emptied cluster takes the farthest point."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < clusters:
        raise CMAAMError(f"--parts {clusters} is more than the {len(points)} training samples")
    generator = np.random.default_rng(seed)
    centres = [points[generator.integers(len(points))]]
    for _ in range(1, clusters):
        distance = np.min([((points - c) ** 2).sum(axis=1) for c in centres], axis=0)
        weights = distance / distance.sum() if distance.sum() > 0 else np.full(len(points), 1 / len(points))
        centres.append(points[generator.choice(len(points), p=weights)])
    centres = np.array(centres)
    labels = np.zeros(len(points), dtype=int)
    for _ in range(iterations):
        distances = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        labels = distances.argmin(axis=1)
        for k in range(clusters):
            if not (labels == k).any():
                farthest = int(distances[np.arange(len(points)), labels].argmax())
                labels[farthest] = k
        updated = np.array([points[labels == k].mean(axis=0) for k in range(clusters)])
        if np.allclose(updated, centres):
            break
        centres = updated
    return labels


def question_embeddings(model: str | Path, questions: Sequence[str]) -> np.ndarray:
    """Mean of the base model's input-embedding rows over each question's tokens (no extra model needed)."""
    from cmaam.io import CheckpointReader
    from cmaam.io.processors import load_processor

    processor = load_processor(model)
    tokenizer = getattr(processor, "tokenizer", processor)
    with CheckpointReader(model) as reader:
        names = [n for n in reader.keys() if n.endswith("embed_tokens.weight")]
        if len(names) != 1:
            raise CMAAMError(f"{model}: cannot find one token-embedding matrix for --split cluster")
        table = reader.get(names[0]).float().numpy()
    vectors = []
    for question in questions:
        ids = tokenizer(question, add_special_tokens=False)["input_ids"] or [0]
        vectors.append(table[ids].mean(axis=0))
    return np.array(vectors)


def write_parts(config: DTMConfig) -> list[Path]:
    """OUTPUT/parts/part_k/train.jsonl and parts.json (idempotent: the same inputs give the same bytes)."""
    from cmaam.io.atomic import atomic_directory
    from finetune.data import write_vqa_split

    folder = Path(config.output) / "parts"
    paths = [folder / f"part_{k}" for k in range(config.parts)]
    if (folder / PARTS_FILE).is_file():
        return paths
    records = read_records(Path(config.data) / "train.jsonl")
    if config.split == "category":
        labels = split_by_category(records, config.parts, config.category_field)
    else:
        labels = list(kmeans(question_embeddings(config.model, [r["question"] for r in records]), config.parts,
                             config.seed))
    summary = []
    with atomic_directory(folder, overwrite=True, inputs=[config.data, config.model]) as staged:
        for k in range(config.parts):
            rows = [record for record, label in zip(records, labels) if label == k]
            write_vqa_split(staged / f"part_{k}" / "train.jsonl", rows)
            categories: dict[str, int] = {}
            for row in rows:
                key = str(row.get(config.category_field, "all"))
                categories[key] = categories.get(key, 0) + 1
            summary.append({"part": k, "samples": len(rows), config.category_field: dict(sorted(categories.items()))})
        (staged / PARTS_FILE).write_text(json.dumps({"split": config.split, "seed": config.seed, "parts": summary},
                                                    indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return paths


# -- training, merging, evaluation --------------------------------------------------------------------
def train_lora(config: DTMConfig, data: Path, output: Path) -> dict:
    """One ``finetune.lora_vqa`` run with ``config.training`` (skipped when its train_result.json exists,
    resumed from its checkpoints when interrupted); returns that result."""
    from finetune.lora_vqa import RESULT_FILE, LoraTrainConfig, train

    result = output / RESULT_FILE
    if not result.is_file():
        train(LoraTrainConfig.from_settings(
            config.training, model=str(config.model), data=str(data), output=str(output), seed=config.seed,
            eval_limit=0, wandb_mode=config.wandb_mode, results_root=str(Path(config.output) / "results"),
            run_name=f"dtm-{output.name}", resume=output.exists(), threads=config.threads, progress=config.progress))
    return json.loads(result.read_text(encoding="utf-8"))


def merge_name(config: DTMConfig) -> str:
    """The merge's name in the table and folder: soup, or the method with its weight and parameters."""
    if config.merge == "soup":
        return "soup"
    extras = ([f"w{config.merge_weight:g}"] if config.merge_weight is not None else []) + \
        [f"{key}{value}" for key, value in sorted(config.merge_parameters.items())]
    return "_".join([config.merge, *extras])


def merge_submodels(config: DTMConfig, models: Sequence[Path], output: Path) -> Path:
    """The DTM merge: a uniform soup, or ``config.merge`` over the sub-models with the base as base model."""
    from cmaam.io.atomic import atomic_write_yaml
    from cmaam.merging.config_merge import merge_from_config
    from cmaam.merging.soups import uniform_soup

    if output.exists():
        return output
    options = ExecutionOptions(seed=config.seed, progress=config.progress)
    if config.merge == "soup":
        return uniform_soup(models, output, options)
    weight = config.merge_weight if config.merge_weight is not None else 1.0 / len(models)
    recipe = {"merge_method": config.merge, "base_model": str(Path(config.model).resolve()),
              "models": [{"model": str(Path(m).resolve()), "parameters": {"weight": weight}} for m in models],
              "parameters": dict(config.merge_parameters)}
    path = atomic_write_yaml(Path(config.output) / f"{output.name}.yaml", recipe)
    return merge_from_config(path, output, options)


def evaluate(model: Path | str, sets: dict[str, list], config: DTMConfig) -> dict[str, float]:
    """The VQA metrics of one model on each set (exact match, per category)."""
    from eval.generation import load_generator
    from eval.vqa import evaluate_vqa

    generator = load_generator(str(model), backend="hf", device="auto", batch_size=config.eval_batch_size,
                               max_new_tokens=config.max_new_tokens)
    metrics = {}
    for name, items in sets.items():
        result = evaluate_vqa(generator, items, max_new_tokens=config.max_new_tokens)
        metrics.update({f"{name}/{key}": value for key, value in result.metrics.items()})
    return metrics


def run_dtm(config: DTMConfig) -> dict:
    """Disperse, train, merge and evaluate; returns (and writes) the comparison."""
    from cmaam.io.atomic import claim_output

    config.validate()
    root = Path(config.output)
    # a run folder that resumes (like the experiment's): locked for the whole run, never overlapping its inputs
    with claim_output(root, inputs=[config.model, config.data, config.retention], overwrite=None):
        return _run(config, root)


def _run(config: DTMConfig, root: Path) -> dict:
    from cmaam.io.atomic import atomic_write_json, atomic_write_text
    from eval.vqa import load_vqa_jsonl

    started = time.time()
    parts = write_parts(config)
    rows = []
    submodels = []
    for k, part in enumerate(parts):
        result = train_lora(config, part, root / "submodels" / f"part_{k}")
        submodels.append(root / "submodels" / f"part_{k}" / "merged")
        rows.append({"model": f"part_{k}", "kind": "sub-model", "path": str(submodels[-1]),
                     "train_samples": _samples(part / "train.jsonl"), "train_seconds": result["train_seconds"]})
    merged = merge_submodels(config, submodels, root / f"dtm_{merge_name(config)}")
    rows.append({"model": f"dtm_{merge_name(config)}", "kind": "DTM merge", "path": str(merged),
                 "train_samples": sum(r["train_samples"] for r in rows),
                 "train_seconds": sum(r["train_seconds"] for r in rows)})
    if config.single:
        result = train_lora(config, Path(config.data), root / "single")
        rows.append({"model": "single", "kind": "single fine-tune", "path": str(root / "single" / "merged"),
                     "train_samples": _samples(Path(config.data) / "train.jsonl"),
                     "train_seconds": result["train_seconds"]})
    rows.insert(0, {"model": "base", "kind": "base", "path": str(config.model), "train_samples": 0,
                    "train_seconds": 0.0})
    report = {"config": asdict(config), "rows": rows, "seconds": time.time() - started}
    if not config.evaluate:
        atomic_write_json(root / "dtm.json", report)
        return report
    sets = {"target": load_vqa_jsonl(Path(config.data) / "test.jsonl", limit=config.eval_limit)}
    if config.retention:
        sets["retention"] = load_vqa_jsonl(Path(config.retention) / "test.jsonl", limit=config.eval_limit)
    cache = root / "metrics.json"
    known = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
    for row in rows:
        if row["kind"] == "sub-model" and not config.evaluate_parts:
            continue
        if row["model"] not in known:
            known[row["model"]] = evaluate(row["path"], sets, config)
            atomic_write_json(cache, known)
        row["metrics"] = known[row["model"]]
    report["seconds"] = time.time() - started
    atomic_write_json(root / "dtm.json", report)
    atomic_write_text(root / "dtm.md", table(rows, config))
    _figure(rows, root / "dtm.png")
    return report


def _samples(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def table(rows: Sequence[dict], config: DTMConfig) -> str:
    """The comparison as Markdown: exact match on the target test split (and retention), training cost."""
    retention = bool(config.retention)
    header = "| model | kind | train samples | target exact match |" \
        + (" retention exact match |" if retention else "") + " train s |"
    lines = [f"DTM: {config.parts} parts by {config.split}, merged by {merge_name(config)}, seed {config.seed}", "",
             header, "|---" * (header.count("|") - 1) + "|"]
    for row in rows:
        metrics = row.get("metrics")
        if metrics is None:
            continue
        cells = [row["model"], row["kind"], str(row["train_samples"]), f"{metrics['target/exact_match']:.3f}"]
        if retention:
            cells.append(f"{metrics['retention/exact_match']:.3f}")
        cells.append(f"{row['train_seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figure(rows: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmaam.io.atomic import atomic_write_bytes

    shown = [row for row in rows if row.get("metrics")]
    sets = sorted({key.split("/")[0] for row in shown for key in row["metrics"] if key.endswith("/exact_match")
                   and key.count("/") == 1})
    figure, axis = plt.subplots(figsize=(max(5, 0.9 * len(shown) + 2), 3.6))
    width = 0.8 / len(sets)
    for offset, name in enumerate(sets):
        axis.bar([i + offset * width for i in range(len(shown))],
                 [row["metrics"][f"{name}/exact_match"] for row in shown], width, label=name)
    axis.set_xticks([i + width * (len(sets) - 1) / 2 for i in range(len(shown))], [row["model"] for row in shown],
                    rotation=30, ha="right")
    axis.set_ylabel("exact match (test split)")
    axis.set_title("Disperse-Then-Merge vs a single fine-tune")
    axis.legend()
    figure.tight_layout()
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m finetune.dtm", description=__doc__.splitlines()[0],
                                     epilog="Any other flag goes to python -m finetune.lora_vqa (e.g. --epochs 3 "
                                            "--lr 2e-3 --lora-rank 16 --threads 1).")
    parser.add_argument("--model", required=True, help="base VLM folder (with its processor)")
    parser.add_argument("--data", required=True, help="VQA folder with train.jsonl and test.jsonl")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--parts", type=int, default=3, help="K: sub-models to train (default 3)")
    parser.add_argument("--split", default="category", choices=SPLITS,
                        help="category: whole categories per part; cluster: k-means of question embeddings")
    parser.add_argument("--category-field", default="category", help="record field for --split category")
    parser.add_argument("--merge", default="soup", help="soup (default) or a registered merge method")
    parser.add_argument("--merge-parameter", action="append", default=[], metavar="KEY=VALUE",
                        help="global parameter of the merge method (e.g. density=0.5)")
    parser.add_argument("--merge-weight", type=float, default=None,
                        help="weight of each sub-model in a method merge (default 1/K; 1 sums the task vectors)")
    parser.add_argument("--retention", help="English VQA folder (test.jsonl) for the retention column")
    parser.add_argument("--no-single", dest="single", action="store_false", help="skip the single fine-tune")
    parser.add_argument("--no-part-eval", dest="evaluate_parts", action="store_false",
                        help="do not evaluate the sub-models")
    parser.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N test items")
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


def parse_parameters(assignments: Sequence[str]) -> dict[str, Any]:
    """KEY=VALUE strings (values read as YAML) -> a dict."""
    import yaml

    parameters = {}
    for assignment in assignments:
        if "=" not in assignment:
            raise CMAAMError(f"--merge-parameter {assignment!r}: expected KEY=VALUE (e.g. density=0.5)")
        key, value = assignment.split("=", 1)
        parameters[key.strip()] = yaml.safe_load(value)
    return parameters


def training_settings(arguments: Sequence[str]) -> tuple[TrainingSettings, int | None]:
    """The training flags of ``python -m finetune.lora_vqa`` (its parser, so the same names and defaults) as
    TrainingSettings, and its --threads."""
    from finetune.lora_vqa import build_parser as lora_parser

    values = vars(lora_parser().parse_args(["--model", "-", "--data", "-", "--output", "-", *arguments]))
    if values["target_modules"] is not None:
        values["target_modules"] = tuple(values["target_modules"])
    settings = TrainingSettings(**{f.name: values[f.name] for f in fields(TrainingSettings)})
    return settings, values["threads"]


def main(argv: Sequence[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    options = vars(args)
    options["merge_parameters"] = parse_parameters(options.pop("merge_parameter"))
    training, threads = training_settings(rest)
    config = DTMConfig(**options, training=training, threads=threads)
    report = run_dtm(config)
    print(table(report["rows"], config), end="")
    return 0


if __name__ == "__main__":
    run_cli(main)
