"""MGSM items from a TSV file, a bundled language (en, ja, zh) or a Hugging Face dataset saved to disk."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cmaam.core.errors import CMAAMError
from eval.language import LANGUAGES, check_language_code
from eval.mgsm.extract import parse_gold
from eval.readers import read_tsv

BUNDLED_DIR = Path(__file__).parent / "data"
BUNDLED_LANGUAGES = ("en", "ja", "zh")


@dataclass(frozen=True)
class MGSMItem:
    """One problem: question text, numeric gold answer, 0-based position in the source."""

    question: str
    answer: float
    index: int


def bundled_path(lang: str) -> Path:
    """The bundled TSV of a language; Korean (no official split) must be given as a file."""
    check_language_code(lang)
    if lang not in BUNDLED_LANGUAGES:
        raise CMAAMError(f"MGSM has no bundled {lang!r} split (bundled: {', '.join(BUNDLED_LANGUAGES)}); "
                         f"pass a TSV (question<TAB>answer) with --data")
    return BUNDLED_DIR / f"mgsm_{lang}.tsv"


def _from_tsv(path: Path) -> list[MGSMItem]:
    rows = read_tsv(path, columns=2)
    return [MGSMItem(fields[0].strip(), parse_gold(fields[1], f"{path}:{number}"), index)
            for index, (number, fields) in enumerate(rows)]


def _from_datasets_folder(path: Path) -> list[MGSMItem]:
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as error:
        raise CMAAMError(f"{path}: not a datasets folder saved with save_to_disk ({error})") from None
    if isinstance(dataset, DatasetDict):
        split = "test" if "test" in dataset else next(iter(dataset)) if len(dataset) == 1 else None
        if split is None:
            raise CMAAMError(f"{path}: several splits ({', '.join(dataset)}) and none named 'test'")
        dataset = dataset[split]
    answer_column = next((c for c in ("answer_number", "answer") if c in dataset.column_names), None)
    if "question" not in dataset.column_names or answer_column is None:
        raise CMAAMError(f"{path}: needs columns 'question' and 'answer_number' or 'answer', "
                         f"found {', '.join(dataset.column_names)}")
    return [MGSMItem(str(row["question"]).strip(), parse_gold(str(row[answer_column]), f"{path}: row {index}"), index)
            for index, row in enumerate(dataset)]


def load_mgsm(source: str | Path | None = None, limit: int | None = None, lang: str | None = None) -> list[MGSMItem]:
    """Load MGSM items from a TSV path, a bundled language code, or a ``datasets`` folder; first ``limit`` items.

    With ``source`` None the bundled split of ``lang`` is used.
    """
    if source is None:
        if lang is None:
            raise CMAAMError("give an MGSM source (TSV file, datasets folder) or a language")
        source = bundled_path(lang)
    elif str(source) in LANGUAGES and not Path(source).exists():
        source = bundled_path(str(source))
    path = Path(source)
    if path.is_dir():
        items = _from_datasets_folder(path)
    elif path.is_file():
        items = _from_tsv(path)
    else:
        raise CMAAMError(f"{path}: data file not found")
    if limit is not None:
        if limit < 1:
            raise CMAAMError(f"limit must be positive, got {limit}")
        items = items[:limit]
    return items
