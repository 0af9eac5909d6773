"""Prepare a Korean VQA corpus (per-category JSON/JSONL files) as a VQA JSONL folder: train/val/test splits.

Reads the LLaVA conversation format ({image, conversations: [{from: human, value: "<image>\\n..."},
{from: gpt, value: ...}]}) and the flat format ({image, question, answer}); the category of a file is
the category name found in its file or folder name. Rows whose image is missing or unreadable are
skipped and counted; a seeded, per-category (stratified) sample of the requested size is split into
train/val/test and a count table is printed and written (counts.md, counts.json).
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import shutil
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from cmaam.io.atomic import atomic_directory, atomic_write_json, atomic_write_text, claim_output
from cmaam.core.errors import CMAAMError
from cmaam.core.options import DATA, ExecutionOptions, add_execution_options
from eval.language import script_counts
from finetune.data import CATEGORIES, SPLITS, count_table, split_counts, write_vqa_split

logger = logging.getLogger(__name__)

MODE_SIZES = {"tiny": 10_000, "quick": 100_000, "full": None}
IMAGE_CHECKS = ("exists", "header")
LANG_CHOICES = ("auto", "ko", "en")
_IMAGE_TOKEN = re.compile(r"\s*<image>\s*")
HUMAN_ROLES, ASSISTANT_ROLES = ("human", "user"), ("gpt", "assistant")


@dataclass
class PrepConfig:
    """Options of the corpus preparation."""

    source: str
    output: str
    mode: str = "tiny"
    sizes: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    image_root: str | None = None
    copy_images: bool = False
    check_images: str = "header"
    lang: str = "auto"
    workers: int = 8
    overwrite: bool = False


@dataclass
class Candidate:
    """One question-answer pair read from the corpus, before its image is checked."""

    id: str
    image: str | None
    question: str
    answer: str
    category: str
    lang: str


def parse_sizes(entries: Sequence[str]) -> dict[str, int]:
    """``["tiny=5000", "general=200"]`` -> {"tiny": 5000, "general": 200} (modes or categories)."""
    sizes = {}
    for entry in entries:
        name, _, value = entry.partition("=")
        if name not in MODE_SIZES and name not in CATEGORIES:
            raise CMAAMError(f"--sizes {entry!r}: the name must be a mode ({', '.join(MODE_SIZES)}) "
                             f"or a category ({', '.join(CATEGORIES)})")
        if not value.isdigit() or int(value) < 1:
            raise CMAAMError(f"--sizes {entry!r}: expected NAME=N with N a positive integer")
        sizes[name] = int(value)
    return sizes


def category_of(path: Path, source: Path) -> str | None:
    """The corpus category named in a file's name, else in its nearest folder name (longest match wins)."""
    relative = path.relative_to(source)
    for part in [relative.name.split(".")[0], *reversed(relative.parts[:-1])]:
        name = part.lower().replace("-", "_").replace(" ", "_")
        found = [category for category in CATEGORIES if category in name]
        if found:
            return max(found, key=len)
    return None


def find_files(source: Path) -> tuple[dict[Path, str], list[Path]]:
    """Recognised data files (JSON/JSONL named after a category) with their category, and the ignored ones."""
    if not source.is_dir():
        raise CMAAMError(f"{source}: source folder not found")
    recognised, ignored = {}, []
    for path in sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in (".json", ".jsonl")):
        category = category_of(path, source)
        if category is None:
            ignored.append(path)
        else:
            recognised[path] = category
    if not recognised:
        raise CMAAMError(f"{source}: no recognised data files (.json/.jsonl whose file or folder name contains a "
                         f"category: {', '.join(CATEGORIES)})")
    return recognised, ignored


def read_records(path: Path) -> Iterator[tuple[int, dict | None]]:
    """(row number, record) pairs of a JSON list or JSONL file; a malformed JSONL line yields None."""
    if path.suffix.lower() == ".jsonl":
        with open(path, encoding="utf-8-sig") as file:
            for number, line in enumerate(file, start=1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        record = None
                    yield number, record if isinstance(record, dict) else None
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CMAAMError(f"{path}: not valid JSON ({error})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise CMAAMError(f"{path}: expected a JSON list of records (or JSONL)")
    for number, record in enumerate(data, start=1):
        yield number, record if isinstance(record, dict) else None


def _text(value) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def question_answer_pairs(record: dict) -> list[tuple[str, str]] | None:
    """The (question, answer) pairs of a record in either format; None when it has none."""
    if "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list):
            return None
        pairs = []
        for human, assistant in zip(turns[0::2], turns[1::2]):
            if not (isinstance(human, dict) and isinstance(assistant, dict)) or \
                    human.get("from") not in HUMAN_ROLES or assistant.get("from") not in ASSISTANT_ROLES:
                return None
            question, answer = _text(human.get("value")), _text(assistant.get("value"))
            if question is None or answer is None:
                return None
            pairs.append((_IMAGE_TOKEN.sub("\n", question).strip(), answer))
        return pairs or None
    question, answer = _text(record.get("question")), _text(record.get("answer"))
    if question is None or answer is None:
        return None
    return [(_IMAGE_TOKEN.sub("\n", question).strip(), answer)]


def detect_lang(question: str, answer: str, lang: str) -> str:
    """'ko' when the text has Hangul (with --lang auto), else 'en'; a fixed --lang is used as is."""
    if lang != "auto":
        return lang
    return "ko" if script_counts(question + answer)["hangul"] else "en"


def read_corpus(files: dict[Path, str], config: PrepConfig) -> tuple[list[Candidate], Counter, Counter]:
    """Every question-answer pair of the recognised files; broken rows counted per category and reason."""
    source = Path(config.source)
    candidates, broken, reasons, seen = [], Counter(), Counter(), Counter()
    for path, category in files.items():
        stem = path.relative_to(source).with_suffix("").as_posix().replace("/", "__")
        for number, record in read_records(path):
            problem = row_problem(record)
            if problem:
                broken[category] += 1
                reasons[problem] += 1
                continue
            pairs = question_answer_pairs(record)
            image_path = resolve_image(record["image"].strip(), path.parent, config)
            row_id = f"{category}/{record.get('id') or f'{stem}-{number}'}"
            seen[row_id] += 1
            if seen[row_id] > 1:  # ids repeated across files stay distinct
                row_id = f"{row_id}~{seen[row_id] - 1}"
            for turn, (question, answer) in enumerate(pairs):
                candidates.append(Candidate(row_id + (f"#{turn}" if len(pairs) > 1 else ""), image_path, question,
                                            answer, category, detect_lang(question, answer, config.lang)))
    return candidates, broken, reasons


def row_problem(record: dict | None) -> str | None:
    """Why a corpus row cannot be used before its image is checked, or None."""
    if record is None:
        return "malformed row"
    if question_answer_pairs(record) is None:
        return "no question/answer"
    image = record.get("image")
    if isinstance(image, list):
        return "several images"
    return None if _text(image) else "no image"


def resolve_image(image: str, folder: Path, config: PrepConfig) -> str:
    """Absolute image path: as given when absolute, else under --image-root, the file's folder or the source."""
    path = Path(image)
    if path.is_absolute():
        return str(path)
    roots = [Path(config.image_root)] if config.image_root else [folder, Path(config.source)]
    for root in roots:
        if (root / path).is_file():
            return str((root / path).resolve())
    return str((roots[0] / path).resolve())


def image_problem(path: str, check: str) -> str | None:
    """Why an image cannot be used ('image missing' / 'image unreadable'), or None."""
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file() or file.stat().st_size == 0:
        return "image missing"
    if check == "header":
        try:
            with Image.open(file) as image:
                image.size  # noqa: B018 - reading the header is the check
        except (UnidentifiedImageError, OSError, ValueError):
            return "image unreadable"
    return None


def check_images(candidates: list[Candidate], config: PrepConfig, progress: bool = True) -> dict[str, str]:
    """Problems of the distinct images referenced by ``candidates`` (checked in parallel threads)."""
    from tqdm.auto import tqdm

    paths = sorted({c.image for c in candidates})
    with ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        results = list(tqdm(pool.map(lambda p: image_problem(p, config.check_images), paths), total=len(paths),
                            desc="checking images", unit="image", disable=not progress))
    return {path: problem for path, problem in zip(paths, results) if problem}


def allocate(available: dict[str, int], total: int | None, caps: dict[str, int]) -> dict[str, int]:
    """Per-category sample sizes proportional to what is available, within caps (``total`` None: everything).

    Categories whose proportional share exceeds their limit get the limit and the rest is shared again
    among the others; the final shares are rounded by largest remainder (ties by name).
    """
    limits = {c: min(n, caps.get(c, n)) for c, n in available.items()}
    if total is None or total >= sum(limits.values()):
        return limits
    result, open_categories, remaining = {}, sorted(c for c in limits if limits[c] > 0), total
    while True:
        weight = sum(available[c] for c in open_categories)
        full = [c for c in open_categories if remaining * available[c] / weight >= limits[c]]
        if not full:
            break
        for c in full:
            result[c] = limits[c]
            remaining -= limits[c]
        open_categories = [c for c in open_categories if c not in full]
    shares = {c: remaining * available[c] / weight for c in open_categories}
    result.update({c: math.floor(share) for c, share in shares.items()})
    leftover = remaining - sum(result[c] for c in open_categories)
    for c in sorted(open_categories, key=lambda c: (-(shares[c] - math.floor(shares[c])), c))[:leftover]:
        result[c] += 1
    return {c: result.get(c, 0) for c in limits}


def prepare(config: PrepConfig, progress: bool = True) -> dict:
    """Read, check, sample and split the corpus; write the VQA JSONL folder and the count table."""
    if config.mode not in MODE_SIZES:
        raise CMAAMError(f"unknown --mode {config.mode!r} (choose {', '.join(MODE_SIZES)})")
    if config.check_images not in IMAGE_CHECKS:
        raise CMAAMError(f"unknown --check-images {config.check_images!r} (choose {', '.join(IMAGE_CHECKS)})")
    if config.lang not in LANG_CHOICES:
        raise CMAAMError(f"unknown --lang {config.lang!r} (choose {', '.join(LANG_CHOICES)})")
    if not (0 <= config.val_fraction < 1 and 0 <= config.test_fraction < 1
            and config.val_fraction + config.test_fraction < 1):
        raise CMAAMError("--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1")
    if config.image_root and not Path(config.image_root).is_dir():
        raise CMAAMError(f"{config.image_root}: image root folder not found")
    inputs = [config.source, config.image_root]
    with claim_output(config.output, inputs=inputs, overwrite=config.overwrite):  # before any work
        files, ignored = find_files(Path(config.source))
        candidates, broken, reasons = read_corpus(files, config)
        problems = check_images(candidates, config, progress) if candidates else {}
        valid: dict[str, list[Candidate]] = defaultdict(list)
        for candidate in candidates:
            problem = problems.get(candidate.image)
            if problem:
                broken[candidate.category] += 1
                reasons[problem] += 1
            else:
                valid[candidate.category].append(candidate)
        if not valid:
            raise CMAAMError(f"{config.source}: no usable rows ({sum(broken.values())} broken: "
                             + ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items())) + ")")
        total = config.sizes.get(config.mode, MODE_SIZES[config.mode])
        caps = {name: size for name, size in config.sizes.items() if name in CATEGORIES}
        sizes = allocate({c: len(rows) for c, rows in valid.items()}, total, caps)
        rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
        for category in sorted(valid):
            chosen = list(valid[category])
            random.Random(f"{config.seed}:{category}").shuffle(chosen)
            chosen = chosen[:sizes[category]]
            counts = split_counts(len(chosen), config.val_fraction, config.test_fraction)
            bounds = {"test": (0, counts["test"]), "val": (counts["test"], counts["test"] + counts["val"]),
                      "train": (counts["test"] + counts["val"], len(chosen))}
            for split, (start, stop) in bounds.items():
                rows[split] += [{"id": c.id, "image": c.image, "question": c.question, "answer": c.answer,
                                 "category": c.category, "lang": c.lang} for c in chosen[start:stop]]
        table = count_table(rows, categories=CATEGORIES,
                            extra={"valid": {c: len(v) for c, v in valid.items()}, "broken": dict(broken)})
        summary = {**table.data, "broken_reasons": dict(sorted(reasons.items())), "mode": config.mode,
                   "sizes": config.sizes, "seed": config.seed, "source": str(config.source),
                   "files": {str(path): category for path, category in files.items()},
                   "ignored_files": [str(path) for path in ignored]}
        images = {row["image"] for split in SPLITS for row in rows[split]}
        with atomic_directory(config.output, config.overwrite, inputs=[*inputs, *images]) as folder:
            if config.copy_images:
                copy_images(rows, folder)
            for split in SPLITS:
                write_vqa_split(folder / f"{split}.jsonl", rows[split])
            atomic_write_text(folder / "counts.md", table.markdown)
            atomic_write_json(folder / "counts.json", summary)
    return summary


def summary_text(summary: dict, output: str | Path, source: str | Path) -> str:
    """What the command prints: the count table, the broken rows by reason, the files without a category."""
    text = (Path(output) / "counts.md").read_text(encoding="utf-8")
    reasons, ignored = summary["broken_reasons"], summary["ignored_files"]
    if reasons:
        text += "broken rows: " + ", ".join(f"{reason} {count:,}" for reason, count in reasons.items()) + "\n"
    if ignored:
        text += (f"ignored {len(ignored)} file(s) with no category in their name: "
                 + ", ".join(str(Path(p).relative_to(source)) for p in ignored[:5]) + "\n")
    return text


def copy_images(rows: dict[str, list[dict]], folder: Path) -> None:
    """Copy the referenced images into folder/images/<category>/ and point the rows at the copies."""
    copies: dict[str, str] = {}
    for split in SPLITS:
        for row in rows[split]:
            source = row["image"]
            if source not in copies:
                relative = f"images/{row['category']}/{len(copies):08d}{Path(source).suffix.lower()}"
                (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, folder / relative)
                copies[source] = relative
            row["image"] = copies[source]


def build_parser():
    import argparse

    parser = argparse.ArgumentParser(prog="scripts/prepare_korean_vqa_data.py", description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="corpus folder with per-category JSON/JSONL files")
    parser.add_argument("--output", required=True, help="folder to create (train/val/test.jsonl, counts.md/json)")
    parser.add_argument("--mode", default="tiny", choices=list(MODE_SIZES),
                        help="sample size: tiny 10K, quick 100K, full everything (default tiny)")
    parser.add_argument("--sizes", nargs="+", default=[], metavar="NAME=N",
                        help="override a mode's size (tiny=5000) or cap a category (general=2000)")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--test-fraction", type=float, default=0.05)
    parser.add_argument("--image-root", default=None,
                        help="folder relative image paths start from (default: the data file's folder, then SOURCE)")
    parser.add_argument("--copy-images", action="store_true",
                        help="copy images into OUTPUT/images/ (default: reference them)")
    parser.add_argument("--check-images", default="header", choices=IMAGE_CHECKS,
                        help="exists: the file is there; header: PIL can read its header (default)")
    parser.add_argument("--lang", default="auto", choices=LANG_CHOICES,
                        help="record language (auto: 'ko' when question or answer has Hangul)")
    parser.add_argument("--workers", type=int, default=8, help="threads checking images")
    add_execution_options(parser, DATA, help={"seed": "sampling and split seed (default: 0)"})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = ExecutionOptions.from_args(args)
    summary = prepare(PrepConfig(source=args.source, output=args.output, mode=args.mode, sizes=parse_sizes(args.sizes),
                                 seed=options.seed, val_fraction=args.val_fraction,
                                 test_fraction=args.test_fraction, image_root=args.image_root,
                                 copy_images=args.copy_images, check_images=args.check_images,
                                 lang=args.lang, workers=args.workers, overwrite=options.overwrite),
                      progress=options.progress)
    print(summary_text(summary, args.output, args.source), end="")
    return 0


if __name__ == "__main__":
    from cmaam.core.cli import run_cli

    run_cli(main)
