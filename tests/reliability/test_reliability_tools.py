"""The smaller CLIs (check, layouts, tiny, compare, monitor) under bad input."""

from __future__ import annotations

import json

from reliability.harness import Registry, python

CASES = Registry()


@CASES.add("check-missing-folder", "cmaam.check", "a model folder does not exist")
def _(ws, folder):
    missing = folder / "gone"
    return dict(command=python("cmaam.check", ws.llama, missing), inputs=[ws.llama], fragments=["gone"])


@CASES.add("check-pickle-refused", "cmaam.check", "pickled weights without --allow-pickle")
def _(ws, folder):
    pickled = ws.pickled(ws.llama_ft, folder / "pickled")
    return dict(command=python("cmaam.check", ws.llama, pickled), inputs=[ws.llama, pickled], fragments=["pickle"])


@CASES.add("check-truncated-shard", "cmaam.check", "model.safetensors cut in half")
def _(ws, folder):
    truncated = ws.truncated(ws.llama_ft, folder / "truncated")
    return dict(command=python("cmaam.check", ws.llama, truncated), inputs=[ws.llama, truncated],
                fragments=["model.safetensors"])


@CASES.add("layouts-unknown-model-type", "cmaam.layouts", "--model-type gpt17")
def _(ws, folder):
    return dict(command=python("cmaam.layouts", ws.qwen, "--model-type", "gpt17"), inputs=[ws.qwen],
                fragments=["gpt17"])


@CASES.add("layouts-malformed-rules", "cmaam.layouts", "--rules-file is not valid YAML")
def _(ws, folder):
    rules = folder / "rules.yaml"
    rules.write_text("components:\n  vision: [unclosed\n", encoding="utf-8")
    return dict(command=python("cmaam.layouts", ws.qwen, "--rules-file", rules), inputs=[ws.qwen, rules],
                fragments=["rules.yaml"])


@CASES.add("tiny-negative-layers", "cmaam.tiny", "--num-hidden-layers -1")
def _(ws, folder):
    return dict(command=python("cmaam.tiny", "--output", folder / "tiny", "--model-type", "llama",
                               "--num-hidden-layers", "-1"), outputs=[folder / "tiny"], fragments=["layers"])


@CASES.add("tiny-heads-not-dividing-hidden", "cmaam.tiny", "--num-attention-heads 5 with hidden size 64")
def _(ws, folder):
    return dict(command=python("cmaam.tiny", "--output", folder / "tiny", "--model-type", "llama",
                               "--num-attention-heads", "5"), outputs=[folder / "tiny"], fragments=["heads"])


@CASES.add("tiny-output-exists", "cmaam.tiny", "--output already exists, no --overwrite")
def _(ws, folder):
    output = folder / "tiny"
    output.mkdir()
    (output / "notes.txt").write_text("mine", encoding="utf-8")
    return dict(command=python("cmaam.tiny", "--output", output, "--model-type", "llama"), outputs=[output],
                fragments=["exists"])


def result_folder(root, name, metrics_text):
    run = root / name
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(metrics_text, encoding="utf-8")
    (run / "config.yaml").write_text(f"model_name: {name}\nrole: other\n", encoding="utf-8")
    return run


@CASES.add("compare-missing-runs", "cmaam.compare", "the result folder does not exist")
def _(ws, folder):
    missing = folder / "results"
    return dict(command=python("cmaam.compare", missing, "--output", folder / "comparison"),
                outputs=[folder / "comparison"], fragments=["results"])


@CASES.add("compare-malformed-metrics", "cmaam.compare", "a run's metrics.json is malformed JSON")
def _(ws, folder):
    results = folder / "results"
    result_folder(results, "base", json.dumps({"ko/exact_match": 0.1, "en/exact_match": 0.5}))
    result_folder(results, "merged", '{"ko/exact_match": 0.3, ')
    return dict(command=python("cmaam.compare", results, "--output", folder / "comparison"), inputs=[results],
                outputs=[folder / "comparison"], fragments=["metrics.json"])


@CASES.add("monitor-missing-run", "cmaam.monitor", "the run folder does not exist")
def _(ws, folder):
    return dict(command=python("cmaam.monitor", folder / "run"), outputs=[folder / "run"], fragments=["run"])


def bad_state(text: str, ws, folder):
    """A run folder whose state.json holds ``text``: the error line must name state.json."""
    run = folder / "run"
    run.mkdir()
    (run / "state.json").write_text(text, encoding="utf-8")
    return dict(command=python("cmaam.monitor", run), inputs=[run], fragments=["state.json"])


# (case id, fault, the text of state.json)
CASES.add_rows("cmaam.monitor", [
    ("monitor-malformed-state", "state.json is malformed JSON", '{"history": ['),
    ("monitor-state-not-a-mapping", "state.json holds a list, not a mapping", "[1, 2, 3]\n"),
], bad_state)


results, test_tool_fault = CASES.tests()
