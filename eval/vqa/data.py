"""VQA items from JSONL: {id, image, question, answer, answers?, category, lang}, images relative to the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cmaam.core.errors import CMAAMError
from eval.generation import load_image
from eval.language import LANGUAGES, script_counts
from eval.readers import read_jsonl


@dataclass(frozen=True)
class VQAItem:
    """One question about an image (absolute path, or None for a text-only question); ``line`` in its JSONL."""

    id: str
    image: str | None
    question: str
    answer: str
    answers: tuple[str, ...] | None = None
    category: str = "all"
    lang: str = "en"
    line: int | None = field(default=None, compare=False)


def _text(record: dict, key: str, where: str, required: bool = True) -> str | None:
    value = record.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value).strip() == "":
        raise CMAAMError(f"{where}: field {key!r} must be a non-empty string")
    return str(value)


def _item(record: dict, folder: Path, where: str, number: int, check_images: bool, labelled: bool = True) -> VQAItem:
    question = _text(record, "question", where)
    answers = record.get("answers") if labelled else None
    if answers is not None:
        if not isinstance(answers, list) or not answers or not all(isinstance(a, (str, int, float)) for a in answers):
            raise CMAAMError(f"{where}: field 'answers' must be a non-empty list of strings")
        answers = tuple(str(a) for a in answers)
    answer = _text(record, "answer", where, required=answers is None) if labelled else ""
    if answer is None:
        answer = max(answers, key=answers.count)
    image = record.get("image")
    if image is not None:
        if not isinstance(image, str) or not image.strip():
            raise CMAAMError(f"{where}: field 'image' must be a path (or null)")
        path = Path(image) if Path(image).is_absolute() else folder / image
        if check_images and not path.is_file():
            raise CMAAMError(f"{where}: image {image} not found ({path})")
        if check_images:
            try:
                load_image(path)
            except CMAAMError as error:
                raise CMAAMError(f"{where}: {error}") from None
        image = str(path)
    lang = record.get("lang") or ("ko" if script_counts(question)["hangul"] else "en")
    if lang not in LANGUAGES:
        raise CMAAMError(f"{where}: unknown language {lang!r} (choose {', '.join(LANGUAGES)})")
    category = str(record.get("category") or "all")
    return VQAItem(str(record.get("id", f"line-{number}")), image, question, answer, answers, category, lang,
                   line=number)


def load_vqa_jsonl(path: str | Path, limit: int | None = None, check_images: bool = True,
                   labelled: bool = True) -> list[VQAItem]:
    """Read VQA items; any bad line is a one-line error naming ``file:line``. Ids must be unique.

    With ``check_images`` every image is opened and decoded, so an unreadable image stops the run before a model
    is loaded or a result written. ``labelled=False`` reads unlabeled questions: answers are ignored (may be
    absent) and every item's ``answer`` is "".
    """
    path = Path(path)
    if limit is not None and limit < 1:
        raise CMAAMError(f"limit must be positive, got {limit}")
    items: list[VQAItem] = []
    seen: dict[str, int] = {}
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        item = _item(record, path.parent, where, number, check_images, labelled)
        if item.id in seen:
            raise CMAAMError(f"{where}: duplicate id {item.id!r} (first on line {seen[item.id]})")
        seen[item.id] = number
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    return items
