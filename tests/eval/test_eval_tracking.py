"""Run tracking: local files, W&B offline run folder, secrets redacted, wandb failures degrade to local."""

import json
import sys

import pytest
import yaml

from cmaam.core.errors import CMAAMError
from cmaam.io.tracking import REDACTED, default_wandb_mode, redact_secrets, start_run


def test_local_files_and_redaction(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.setenv("WANDB_API_KEY", "local-" + "k" * 40)
    config = {"model": tmp_path / "m", "lr": 0.1, "wandb_api_key": "abc", "hf": {"token": "hf_x"},
              "note": "key local-" + "k" * 40, "hash": "0123456789abcdef" * 2 + "01234567", "seeds": (1, 2)}
    with start_run("run1", config, root=tmp_path, wandb_mode="disabled") as run:
        run.log({"loss": 1.5}, step=0)
        run.log({"loss": 0.5}, step=1)
        run.log_summary({"accuracy": 0.25})
        run.log_summary({"count": 4})
        run.save_samples([{"b": 2, "a": "정답"}], "samples")
        figure, axes = plt.subplots()
        axes.plot([0, 1], [1, 0])
        png = run.save_figure(figure, "curve")
        assert not plt.fignum_exists(figure.number)  # closed once saved
    folder = tmp_path / "run1"
    saved = yaml.safe_load((folder / "config.yaml").read_text())
    assert saved == {"model": str(tmp_path / "m"), "lr": 0.1, "wandb_api_key": REDACTED, "hf": {"token": REDACTED},
                     "note": REDACTED, "hash": REDACTED, "seeds": [1, 2]}
    assert json.loads((folder / "metrics.json").read_text()) == {"accuracy": 0.25, "count": 4}
    assert (folder / "samples.jsonl").read_text(encoding="utf-8") == '{"a": "정답", "b": 2}\n'
    assert [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()] == \
        [{"step": 0, "loss": 1.5}, {"step": 1, "loss": 0.5}]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (folder / "wandb").exists()


def test_wandb_offline_writes_a_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "local-" + "s" * 40)
    with start_run("offline", {"x": 1}, root=tmp_path, wandb_mode="offline") as run:
        assert run.wandb is not None
        run.log({"fitness": 0.5}, step=0)
        run.log_summary({"accuracy": 1.0})
    runs = list((tmp_path / "offline" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    logged = "".join(p.read_text(errors="ignore") for p in (tmp_path / "offline").rglob("*") if p.is_file()
                     and p.suffix in (".log", ".yaml", ".json", ".txt"))
    assert "s" * 40 not in logged


def test_wandb_import_failure_degrades_to_local(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with start_run("local", {"x": 1}, root=tmp_path, wandb_mode="offline") as run:
        run.log_summary({"accuracy": 0.5})
    assert run.wandb is None and "wandb unavailable" in caplog.text
    assert json.loads((tmp_path / "local" / "metrics.json").read_text()) == {"accuracy": 0.5}


def test_bad_arguments(tmp_path, monkeypatch):
    with pytest.raises(CMAAMError, match="unknown W&B mode 'sometimes'"):
        start_run("r", {}, root=tmp_path, wandb_mode="sometimes")
    with pytest.raises(CMAAMError, match="bad run name"):
        start_run("a/b", {}, root=tmp_path, wandb_mode="disabled")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert default_wandb_mode() == "disabled"
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert default_wandb_mode() == "offline"


def test_redact_leaves_ordinary_values():
    config = {"tokenizer": "path/to/tok", "max_new_tokens": 64, "token": None, "secret_word": "x"}
    assert redact_secrets(config) == {"tokenizer": "path/to/tok", "max_new_tokens": 64, "token": None,
                                      "secret_word": "x"}
    assert redact_secrets({"hf_token": "x", "access-token": "y", "Password": "z"}) == \
        {"hf_token": REDACTED, "access-token": REDACTED, "Password": REDACTED}
