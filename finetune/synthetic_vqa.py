"""A small synthetic VQA set (Korean or English) that a tiny VLM can learn on a CPU.

Each sample is a PIL-rendered scene (coloured shapes, positions, counts, bars, a digit) with a templated
question and a short answer. The scene of sample ``i`` depends only on ``(seed, i)``, never on the
language: ``--lang en`` and ``--lang ko`` with the same seed give the same images, tasks and splits, so an
English-trained model and its Korean fine-tune are compared on the same visual problems.
"""

from __future__ import annotations

import argparse
import io
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image, ImageDraw

from cmaam.io.atomic import atomic_directory, atomic_write_json, atomic_write_text
from cmaam.core.cli import run_cli
from cmaam.core.errors import CMAAMError
from cmaam.core.options import DATA, ExecutionOptions, add_execution_options
from finetune.data import SPLITS, count_table, split_counts, write_vqa_split

LANGUAGES = ("ko", "en")
BACKGROUND = (255, 255, 255)
COLOURS = {  # key -> RGB; keys are the language-independent answer keys
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 220),
    "yellow": (235, 205, 20), "purple": (140, 40, 180), "orange": (245, 130, 20),
}
SHAPES = ("circle", "square", "triangle")
QUADRANTS = ("top_left", "top_right", "bottom_left", "bottom_right")
# 5x7 bitmap digits: rendering does not depend on installed fonts or the Pillow version.
DIGIT_GLYPHS = {
    "0": ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    "1": ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "3": ("11111", "00010", "00100", "00010", "00001", "10001", "01110"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    "5": ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    "6": ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    "7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "8": ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    "9": ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
}
DIGITS = tuple("123456789")

WORDS = {
    "en": {
        "red": "red", "green": "green", "blue": "blue", "yellow": "yellow", "purple": "purple", "orange": "orange",
        "circle": "circle", "square": "square", "triangle": "triangle",
        "top_left": "top left", "top_right": "top right", "bottom_left": "bottom left", "bottom_right": "bottom right",
        **{f"count_{n}": str(n) for n in range(1, 5)},
        **{f"digit_{d}": w for d, w in zip(DIGITS, "one two three four five six seven eight nine".split())},
    },
    "ko": {
        "red": "빨간색", "green": "초록색", "blue": "파란색", "yellow": "노란색", "purple": "보라색",
        "orange": "주황색",
        "circle": "원", "square": "사각형", "triangle": "삼각형",
        "top_left": "왼쪽 위", "top_right": "오른쪽 위", "bottom_left": "왼쪽 아래", "bottom_right": "오른쪽 아래",
        **{f"count_{n}": f"{n}개" for n in range(1, 5)},
        **{f"digit_{d}": w for d, w in zip(DIGITS, "일 이 삼 사 오 육 칠 팔 구".split())},
    },
}
QUESTIONS = {
    "en": {
        "colour": ("What color is the shape?", "Which color is the object in the picture?",
                   "Name the color of the shape."),
        "shape": ("What shape is this?", "Which shape is shown in the image?", "Name the shape in the picture."),
        "position": ("Where is the shape?", "In which corner of the image is the shape?",
                     "Where in the picture is the object?"),
        "count": ("How many shapes are there?", "Count the shapes in the image.", "How many objects do you see?"),
        "bars": ("What color is the tallest bar?", "Which bar is the highest? Give its color.",
                 "Name the color of the tallest bar in the chart."),
        "digit": ("Write the number in the image as an English word.", "Which number is shown? Answer in words.",
                  "Read the digit and write it in English."),
    },
    "ko": {
        "colour": ("도형은 무슨 색입니까?", "그림 속 물체의 색깔은 무엇인가요?", "도형의 색을 말해 주세요."),
        "shape": ("이 도형은 어떤 모양입니까?", "그림에 있는 도형은 무엇인가요?", "그림 속 도형의 이름을 말해 주세요."),
        "position": ("도형은 어디에 있습니까?", "도형은 그림의 어느 구석에 있나요?", "물체는 그림의 어디에 있습니까?"),
        "count": ("도형은 몇 개입니까?", "그림 속 도형의 개수를 세어 주세요.", "물체가 몇 개 보이나요?"),
        "bars": ("가장 높은 막대는 무슨 색입니까?", "어느 막대가 가장 높나요? 색으로 답하세요.",
                 "차트에서 가장 높은 막대의 색을 말해 주세요."),
        "digit": ("그림 속 숫자를 한글로 쓰면 무엇입니까?", "이 숫자를 한자어 수사로 읽어 주세요.",
                  "숫자를 읽고 한글로 답하세요."),
    },
}


@dataclass(frozen=True)
class Scene:
    """A rendered image and its language-independent answer key."""

    image: Image.Image
    answer_key: str


def _jitter(rng: random.Random, rgb: tuple[int, int, int], amount: int = 20) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((left + right) // 2, top), (right, bottom), (left, bottom)], fill=fill)


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (size, size), BACKGROUND)
    return image, ImageDraw.Draw(image)


def _big_shape(rng: random.Random, size: int) -> tuple[Image.Image, str, str]:
    """One large shape of a random colour near the centre."""
    image, draw = _canvas(size)
    colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
    extent = rng.randint(int(size * 0.45), int(size * 0.7))
    left = rng.randint(int(size * 0.1), size - extent - int(size * 0.1))
    top = rng.randint(int(size * 0.1), size - extent - int(size * 0.1))
    _draw_shape(draw, shape, (left, top, left + extent, top + extent), _jitter(rng, COLOURS[colour]))
    return image, colour, shape


def _quadrant_box(rng: random.Random, size: int, quadrant: str, extent: int) -> tuple[int, int, int, int]:
    """A random ``extent``-sized box inside one quadrant of the image."""
    half = size // 2
    left = (half if quadrant.endswith("right") else 0) + rng.randint(1, max(1, half - extent - 1))
    top = (half if quadrant.startswith("bottom") else 0) + rng.randint(1, max(1, half - extent - 1))
    return left, top, left + extent, top + extent


def render_colour(rng: random.Random, size: int) -> Scene:
    image, colour, _ = _big_shape(rng, size)
    return Scene(image, colour)


def render_shape(rng: random.Random, size: int) -> Scene:
    image, _, shape = _big_shape(rng, size)
    return Scene(image, shape)


def render_position(rng: random.Random, size: int) -> Scene:
    image, draw = _canvas(size)
    quadrant = rng.choice(QUADRANTS)
    extent = rng.randint(int(size * 0.25), int(size * 0.4))
    _draw_shape(draw, rng.choice(SHAPES), _quadrant_box(rng, size, quadrant, extent),
                _jitter(rng, COLOURS[rng.choice(sorted(COLOURS))]))
    return Scene(image, quadrant)


def render_count(rng: random.Random, size: int) -> Scene:
    """1-4 shapes, each in its own quadrant (one object per image region keeps counting learnable)."""
    image, draw = _canvas(size)
    count = rng.randint(1, 4)
    for quadrant in rng.sample(QUADRANTS, count):
        extent = rng.randint(int(size * 0.2), int(size * 0.35))
        _draw_shape(draw, rng.choice(SHAPES), _quadrant_box(rng, size, quadrant, extent),
                    _jitter(rng, COLOURS[rng.choice(sorted(COLOURS))]))
    return Scene(image, f"count_{count}")


def render_bars(rng: random.Random, size: int) -> Scene:
    """A two-bar chart (left and right halves) of different colours; the answer is the taller bar's colour."""
    image, draw = _canvas(size)
    colours = rng.sample(sorted(COLOURS), 2)
    low, high = sorted(rng.sample(range(int(size * 0.2), int(size * 0.85)), 2))
    while high - low < size * 0.2:
        low, high = sorted(rng.sample(range(int(size * 0.2), int(size * 0.85)), 2))
    heights = [high, low] if rng.random() < 0.5 else [low, high]
    width = int(size * 0.3)
    baseline = size - max(2, size // 14)
    for index, (colour, height) in enumerate(zip(colours, heights)):
        left = index * (size // 2) + (size // 2 - width) // 2
        draw.rectangle((left, baseline - height, left + width, baseline), fill=_jitter(rng, COLOURS[colour], 10))
    draw.line((0, baseline, size, baseline), fill=(0, 0, 0), width=1)
    return Scene(image, colours[heights.index(high)])


def render_digit(rng: random.Random, size: int) -> Scene:
    """One large 5x7 bitmap digit in a dark colour."""
    image, draw = _canvas(size)
    digit = rng.choice(DIGITS)
    cell = max(1, int(size * rng.uniform(0.09, 0.11)))
    left = rng.randint(1, max(1, size - 5 * cell - 1))
    top = rng.randint(1, max(1, size - 7 * cell - 1))
    colour = _jitter(rng, (30, 30, 30), 25)
    for row, bits in enumerate(DIGIT_GLYPHS[digit]):
        for column, bit in enumerate(bits):
            if bit == "1":
                x, y = left + column * cell, top + row * cell
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=colour)
    return Scene(image, f"digit_{digit}")


@dataclass(frozen=True)
class Task:
    """A visual task: its corpus category, renderer and the answer keys it can produce."""

    category: str
    render: Callable[[random.Random, int], Scene]
    answer_keys: tuple[str, ...]


TASKS: dict[str, Task] = {
    "colour": Task("general", render_colour, tuple(sorted(COLOURS))),
    "shape": Task("general", render_shape, SHAPES),
    "position": Task("general", render_position, QUADRANTS),
    "count": Task("math_problem", render_count, tuple(f"count_{n}" for n in range(1, 5))),
    "bars": Task("visualization", render_bars, tuple(sorted(COLOURS))),
    "digit": Task("korean_problem", render_digit, tuple(f"digit_{d}" for d in DIGITS)),
}


@dataclass
class SyntheticConfig:
    """Options of the synthetic VQA generator."""

    output: str
    n: int = 2000
    lang: str = "ko"
    seed: int = 0
    image_size: int = 56
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    tasks: tuple[str, ...] = field(default_factory=lambda: tuple(TASKS))
    # A bilingual training set: this share of the train questions (of ``extra_tasks``, default all) is
    # worded in ``extra_lang``; val and test stay in ``lang``. The demo's base learns some Korean so.
    extra_lang: str | None = None
    extra_share: float = 0.0
    extra_tasks: tuple[str, ...] | None = None
    overwrite: bool = False

    def validate(self) -> None:
        if self.lang not in LANGUAGES:
            raise CMAAMError(f"--lang must be one of {', '.join(LANGUAGES)}, got {self.lang!r}")
        if self.n < 1:
            raise CMAAMError(f"--n must be at least 1, got {self.n}")
        if self.image_size < 28:
            raise CMAAMError(f"--image-size must be at least 28 pixels, got {self.image_size}")
        unknown = [task for task in self.tasks if task not in TASKS]
        if unknown or not self.tasks:
            raise CMAAMError(f"unknown tasks {unknown} (choose from {', '.join(TASKS)})")
        for name in ("val_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise CMAAMError(f"--{name.replace('_', '-')} must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise CMAAMError("--val-fraction + --test-fraction must be below 1")
        if not 0 <= self.extra_share <= 1:
            raise CMAAMError(f"--extra-share must be in [0, 1], got {self.extra_share}")
        if self.extra_share > 0 and self.extra_lang not in LANGUAGES:
            raise CMAAMError(f"--extra-share needs --extra-lang ({', '.join(LANGUAGES)})")
        if self.extra_lang is not None and self.extra_lang == self.lang:
            raise CMAAMError(f"--extra-lang {self.extra_lang} is already --lang")
        unknown = [task for task in self.extra_tasks or () if task not in self.tasks]
        if unknown:
            raise CMAAMError(f"--extra-tasks {unknown} are not among --tasks ({', '.join(self.tasks)})")

    def sample_language(self, index: int, task: str, split: str) -> str:
        """The language of sample ``index``: ``extra_lang`` for a seeded share of the train questions."""
        if (not self.extra_lang or split != "train" or self.extra_share <= 0
                or (self.extra_tasks is not None and task not in self.extra_tasks)):
            return self.lang
        return self.extra_lang if random.Random(f"extra:{self.seed}:{index}").random() < self.extra_share \
            else self.lang


def answer_options(task: str, lang: str) -> list[str]:
    """Every answer the task can have, in ``lang`` (chance accuracy is 1 / len of this)."""
    return [WORDS[lang][key] for key in TASKS[task].answer_keys]


def make_sample(index: int, task: str, lang: str, seed: int, image_size: int) -> tuple[dict, Image.Image]:
    """Render sample ``index``: the scene uses an RNG seeded by (seed, index) only, the wording one that adds lang."""
    scene = TASKS[task].render(random.Random(f"scene:{seed}:{index}"), image_size)
    wording = random.Random(f"text:{seed}:{index}:{lang}")
    record = {
        "id": f"synthetic-{lang}-{index:06d}", "image": f"images/{index:06d}.png",
        "question": wording.choice(QUESTIONS[lang][task]), "answer": WORDS[lang][scene.answer_key],
        "category": TASKS[task].category, "lang": lang, "task": task,
    }
    return record, scene.image


def assign_splits(tasks: Sequence[str], seed: int, val_fraction: float, test_fraction: float) -> list[str]:
    """Stratified (per task) seeded split of sample indices; independent of the language."""
    splits = ["train"] * len(tasks)
    for task in sorted(set(tasks)):
        indices = [i for i, t in enumerate(tasks) if t == task]
        random.Random(f"split:{seed}:{task}").shuffle(indices)
        counts = split_counts(len(indices), val_fraction, test_fraction)
        for i in indices[:counts["test"]]:
            splits[i] = "test"
        for i in indices[counts["test"]:counts["test"] + counts["val"]]:
            splits[i] = "val"
    return splits


def png_bytes(image: Image.Image) -> bytes:
    """PNG bytes without metadata chunks: the same image always gives the same bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def generate(config: SyntheticConfig, progress: bool = True) -> Path:
    """Write the synthetic set (train/val/test JSONL, images/, counts, dataset_info.json) to ``config.output``."""
    from tqdm.auto import tqdm

    config.validate()
    tasks = [config.tasks[i % len(config.tasks)] for i in range(config.n)]
    random.Random(f"tasks:{config.seed}").shuffle(tasks)
    splits = assign_splits(tasks, config.seed, config.val_fraction, config.test_fraction)
    rows: dict[str, list[dict]] = {split: [] for split in SPLITS}
    with atomic_directory(config.output, config.overwrite, inputs=()) as folder:
        (folder / "images").mkdir()
        for index in tqdm(range(config.n), desc=f"rendering synthetic {config.lang} VQA", disable=not progress):
            language = config.sample_language(index, tasks[index], splits[index])
            record, image = make_sample(index, tasks[index], language, config.seed, config.image_size)
            (folder / record["image"]).write_bytes(png_bytes(image))
            rows[splits[index]].append(record)
        for split in SPLITS:
            write_vqa_split(folder / f"{split}.jsonl", rows[split])
        table = count_table(rows)
        atomic_write_text(folder / "counts.md", table.markdown)
        atomic_write_json(folder / "counts.json", table.data)
        chance = {split: _chance(rows[split]) for split in SPLITS}
        options = {task: answer_options(task, config.lang) for task in config.tasks}
        info = {"generator": "finetune.synthetic_vqa", "config": {**asdict(config), "output": None},
                "answer_options": options, "chance_accuracy": chance}
        atomic_write_json(folder / "dataset_info.json", info)
    return Path(config.output)


def _chance(rows: list[dict]) -> float | None:
    """Expected exact-match accuracy of guessing uniformly among each task's answers."""
    if not rows:
        return None
    return sum(1 / len(answer_options(row["task"], row["lang"])) for row in rows) / len(rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m finetune.synthetic_vqa", description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder to create (train/val/test.jsonl, images/)")
    parser.add_argument("--n", type=int, default=2000, help="number of samples (default 2000)")
    parser.add_argument("--lang", default="ko", choices=LANGUAGES, help="language of questions and answers")
    parser.add_argument("--image-size", type=int, default=56, help="image side in pixels (default 56)")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS),
                        help="visual tasks to include (default: all)")
    parser.add_argument("--extra-lang", default=None, choices=LANGUAGES,
                        help="word a share of the train questions in this language (a bilingual training set)")
    parser.add_argument("--extra-share", type=float, default=0.0, help="that share, in [0, 1] (default 0)")
    parser.add_argument("--extra-tasks", nargs="+", default=None, choices=list(TASKS),
                        help="only these tasks get the extra language (default: all)")
    add_execution_options(parser, DATA, help={"seed": "scenes, wording and split seed (default: 0)"})
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = ExecutionOptions.from_args(args)
    output = generate(SyntheticConfig(output=args.output, n=args.n, lang=args.lang, seed=options.seed,
                                      image_size=args.image_size, val_fraction=args.val_fraction,
                                      test_fraction=args.test_fraction, tasks=tuple(args.tasks),
                                      extra_lang=args.extra_lang, extra_share=args.extra_share,
                                      extra_tasks=tuple(args.extra_tasks) if args.extra_tasks else None,
                                      overwrite=options.overwrite), progress=options.progress)
    print((output / "counts.md").read_text(encoding="utf-8"), end="")
    return 0


if __name__ == "__main__":
    run_cli(main)
