"""Rule 1: no output equals, contains or lies inside an input (symlinks resolved), whatever the flags."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from cmaam import merge, mergekit, soups, sweep
from cmaam.io.atomic import check_no_overlap
from cmaam.core.errors import CMAAMError
from finetune import data_prep
from io_helpers import assert_one_error_line, snapshot

CASES = ("equal", "inside", "contains", "symlink")


def make_corpus(folder: Path, image_folder: Path | None = None) -> Path:
    """A three-row flat-format corpus (general.jsonl) with its images (in ``image_folder``, else beside it)."""
    images = image_folder or folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(3):
        Image.new("RGB", (8, 8), (index * 60, 10, 10)).save(images / f"{index}.png")
        image = str(images / f"{index}.png") if image_folder else f"images/{index}.png"
        rows.append({"image": image, "question": f"q{index}", "answer": f"a{index}"})
    (folder / "general.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return folder


def _link(path: Path, target: Path) -> Path:
    path.symlink_to(target, target_is_directory=True)
    return path


def _layout(tmp_path: Path, place, case: str, leaf: str | None, corpus: bool = False) -> tuple[Path, Path, Path]:
    """(target, source, output argument) for ``case``; ``leaf`` is the folder a CLI adds below its output
    argument (sweep's alpha_0.5). Every input lives in tmp_path/box beside an unrelated file."""
    box = tmp_path / "box"
    box.mkdir()
    (box / "unrelated.txt").write_text("not an input, must survive")
    if leaf is None:
        relative = "box/T"
    else:
        relative = {"equal": f"box/{leaf}", "inside": "box/T", "contains": f"box/{leaf}/T",
                    "symlink": f"box/{leaf}"}[case]
    target = make_corpus(tmp_path / relative) if corpus else place(relative, "T")
    source = place("box/S", "S")
    if leaf is None:
        output = {"equal": target, "inside": target / "merged", "contains": box}.get(case)
        output = output or _link(tmp_path / "link", target)
    else:
        output = {"equal": box, "inside": target, "contains": box}.get(case) or _link(tmp_path / "link", box)
    return target, source, output


def _mergekit_config(tmp_path: Path, target: Path, source: Path) -> Path:
    path = tmp_path / "linear.yaml"
    path.write_text(f"merge_method: linear\nmodels:\n  - model: {target}\n    parameters: {{weight: 0.5}}\n"
                    f"  - model: {source}\n    parameters: {{weight: 0.5}}\ndtype: float32\n")
    return path


CLIS = {
    "merge": (merge.main, None, lambda t, s, o, tmp: ["--source", s, "--target", t, "--output", o, "--no-progress"]),
    "sweep": (sweep.main, "alpha_0.5", lambda t, s, o, tmp: ["--source", s, "--target", t, "--alphas", "0.5",
                                                              "--output-dir", o, "--no-progress"]),
    "mergekit": (mergekit.main, None, lambda t, s, o, tmp: [_mergekit_config(tmp, t, s), o, "--no-progress"]),
    "soups": (soups.main, None, lambda t, s, o, tmp: [o, t, s]),
    "prepare": (data_prep.main, None, lambda t, s, o, tmp: ["--source", t, "--output", o, "--mode", "full",
                                                            "--workers", "1"]),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("cli", list(CLIS))
def test_overwrite_never_touches_an_input(cli, case, place, call, tmp_path):
    main, leaf, arguments = CLIS[cli]
    target, source, output = _layout(tmp_path, place, case, leaf, corpus=cli == "prepare")
    argv = arguments(target, source, output, tmp_path) + ["--overwrite"]
    before = snapshot(tmp_path)
    code, out, err = call(main, argv)
    assert_one_error_line(code, err, "input")
    assert snapshot(tmp_path) == before  # inputs, the unrelated file and the link: same bytes, nothing added
    assert out == ""


def test_refused_without_overwrite_too(place, call, tmp_path):
    target, source = place("T", "T"), place("S", "S")
    code, _, err = call(merge.main, ["--source", source, "--target", target, "--output", target])
    assert_one_error_line(code, err, f"{target}: is also an input")


def test_images_outside_the_corpus_are_inputs_too(call, tmp_path):
    """prepare's rows name images anywhere: an output folder holding them is refused after the corpus is read."""
    pictures = tmp_path / "pictures"
    corpus = make_corpus(tmp_path / "corpus", image_folder=pictures)
    before = snapshot(tmp_path)
    code, _, err = call(data_prep.main, ["--source", corpus, "--output", pictures, "--overwrite", "--mode", "full",
                                         "--workers", "1"])
    assert_one_error_line(code, err, "contains the input", f"{pictures}/")
    assert snapshot(tmp_path) == before


def test_overwrite_through_a_symlink_replaces_the_folder_it_points_to(place, call, tmp_path):
    """Documented choice: a link output is followed; the folder it names is replaced, the link stays."""
    target, source = place("T", "T"), place("S", "S")
    real = tmp_path / "results" / "merged"
    real.mkdir(parents=True)
    (real / "old.txt").write_text("previous output")
    link = _link(tmp_path / "latest", real)
    code, _, err = call(merge.main, ["--source", source, "--target", target, "--output", link, "--overwrite",
                                     "--alphas-only", "--no-progress"])
    assert code == 0, err
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert (real / "alphas.yaml").is_file() and not (real / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no .X.old-PID left
    assert sorted(p.name for p in real.parent.iterdir()) == ["merged"]


def test_dangling_symlink_output_is_refused(place, call, tmp_path):
    target, source = place("T", "T"), place("S", "S")
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "missing")
    code, _, err = call(merge.main, ["--source", source, "--target", target, "--output", link, "--overwrite"])
    assert_one_error_line(code, err, "symbolic link to a missing path")
    assert not (tmp_path / "missing").exists()


def test_rule_compares_resolved_paths_not_prefixes(tmp_path, monkeypatch):
    box = tmp_path / "box"
    (box / "model").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    check_no_overlap([box / "model2"], [box / "model"])  # a shared prefix is not containment
    check_no_overlap([box / "a" / "out"], [box / "model" / "model.safetensors"])
    with pytest.raises(CMAAMError, match="contains the input"):
        check_no_overlap([box], [box / "model" / "model.safetensors"])
    with pytest.raises(CMAAMError, match="is also an input"):
        check_no_overlap([box / "x" / ".." / "model"], [box / "model"])
    for protected in ("/", os.path.expanduser("~"), ".", ".."):
        with pytest.raises(CMAAMError, match="refusing to write an output there"):
            check_no_overlap([protected], [])


def test_lora_output_may_not_be_its_data(tiny_qwen2vl, tmp_path):
    from finetune.lora_vqa import LoraTrainConfig, train

    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("{}\n")
    before = snapshot(data)
    with pytest.raises(CMAAMError, match="is also an input"):
        train(LoraTrainConfig(model=str(tiny_qwen2vl), data=str(data), output=str(data), overwrite=True))
    assert snapshot(data) == before


def test_evolve_run_folder_may_not_lie_inside_a_model(place, tmp_path):
    from cmaam.search.evolution import parse_config, run_search

    target, source = place("T", "T"), place("S", "S")
    config = parse_config({"name": "guard", "base_model": "a", "output_dir": str(target / "run"),
                           "models": [{"name": "a", "path": str(target)}, {"name": "b", "path": str(source)}],
                           "fitness": {"type": "synthetic", "target": 0.5}})
    before = snapshot(tmp_path)
    with pytest.raises(CMAAMError, match="lies inside the input"):
        run_search(config)
    assert snapshot(tmp_path) == before


def test_experiment_folder_may_not_be_its_english_set(tmp_path):
    from cmaam.pipeline.experiment import Pipeline, load_experiment_config

    english = tmp_path / "english"
    english.mkdir()
    (english / "test.jsonl").write_text("{}\n")
    config = load_experiment_config("demo", overrides=[f"output_dir={english}", f"data.english={english}"])
    with pytest.raises(CMAAMError, match="is also an input"):
        Pipeline(config, echo=False).run(["prepare"])
    assert sorted(p.name for p in english.iterdir()) == ["test.jsonl"]


def test_evaluation_run_folder_may_not_be_the_model(place, tmp_path):
    from cmaam.io.tracking import start_run

    model = place("models/T", "T")
    before = snapshot(tmp_path)
    with pytest.raises(CMAAMError, match="is also an input"):
        start_run("T", {}, root=tmp_path / "models", wandb_mode="disabled", inputs=[model])
    assert snapshot(tmp_path) == before


def test_compare_may_not_write_into_a_result_folder(call, tmp_path):
    from cmaam import compare

    for name, role in (("base", "base"), ("tuned", "finetuned")):
        run = tmp_path / "results" / name
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"ko/exact_match": 0.5, "en/exact_match": 0.5}))
        (run / "config.yaml").write_text(f"model_name: {name}\nrole: {role}\n")
    before = snapshot(tmp_path)
    code, _, err = call(compare.main, [tmp_path / "results", "--output", tmp_path / "results" / "base" / "table"])
    assert_one_error_line(code, err, "lies inside the input")
    assert snapshot(tmp_path) == before
