"""cmaam.alignment.report on a hand-built analysis: report fields, alphas.yaml, the tables, heatmap cells, files.

The scores are chosen by hand, so every figure below is computed on paper (strategy ``component``,
base_alpha 0.5, weights PDA 0.4 / GFS 0.3 / CMBC 0.3):
  vision_encoder (2 tensors, 300 + 100 elements): PDA (0.9*300 + 0.5*100)/400 = 0.8, GFS 0.7,
    A = (0.4*0.8 + 0.3*0.7)/0.7 = 0.757142857; r = 0.1, 0.3 -> mean 0.15, cv^2 = 1/3, v = 0.25;
    alpha = 0.5 * A * 0.75 = 0.283928571
  language_model (1 tensor, 200): A = 1, v = 0 -> alpha 0.5
  cross_modal_bridge (1 tensor, 100, CMBC 0.5): A = 0.4*0.8 + 0.3*0.6 + 0.3*0.5 = 0.65 -> alpha 0.325
  mean alpha = (0.283928571*400 + 0.5*200 + 0.325*100) / 700 = 0.351530612
"""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

from cmaam.alignment.alphas import AlphaConfig, compute_alphas
from cmaam.alignment.report import (alphas_document, build_report, heatmap_grid, markdown_report, summary_table,
                                    write_alphas, write_analysis)
from cmaam.alignment.layouts import ParamInfo
from cmaam.alignment.scores.analyzer import Analysis, TensorScore

VISION_ALPHA = 0.5 * (0.53 / 0.7) * 0.75
MEAN_ALPHA = (VISION_ALPHA * 400 + 0.5 * 200 + 0.325 * 100) / 700


def score(name, component, stack, layer, numel, pda, gfs, sensitivity, cmbc=None) -> TensorScore:
    return TensorScore(name=name, info=ParamInfo(component, stack, layer), numel=numel, pda=pda, gfs=gfs,
                       cmbc=cmbc, sensitivity=sensitivity)


@pytest.fixture
def report() -> dict:
    tensors = [
        score("visual.blocks.0.attn.qkv.weight", "vision_encoder", "vision", 0, 300, 0.9, 0.8, 0.1),
        score("visual.blocks.1.attn.qkv.weight", "vision_encoder", "vision", 1, 100, 0.5, 0.4, 0.3),
        score("model.layers.0.mlp.up_proj.weight", "language_model", "language", 0, 200, 1.0, 1.0, 0.2),
        score("visual.merger.mlp.2.weight", "cross_modal_bridge", "bridge", None, 100, 0.8, 0.6, 0.1, cmbc=0.5),
    ]
    analysis = Analysis("qwen2_vl", {t.name: t for t in tensors}, only_in_target=["model.layers.1.norm.weight"],
                        only_in_source=["model.extra.weight"], not_floating=["model.position_ids"],
                        embedding="model.embed_tokens.weight", capture_term=True)
    plan = compute_alphas(analysis, AlphaConfig("component", base_alpha=0.5))
    return build_report(analysis, plan, {"source": "S", "target": "T", "interp": "linear"})


def test_report_fields(report):
    assert report["version"] == 1
    assert report["settings"] == {"source": "S", "target": "T", "interp": "linear", "strategy": "component",
                                  "base_alpha": 0.5, "alpha_min": 0.0, "alpha_max": 1.0,
                                  "score_weights": {"pda": 0.4, "gfs": 0.3, "cmbc": 0.3}, "preserve_mean": False,
                                  "use_sensitivity": True, "model_type": "qwen2_vl"}
    assert report["summary"] == {"tensors_scored": 4, "groups": 3, "mean_alpha": pytest.approx(MEAN_ALPHA, rel=1e-7),
                                 "min_alpha": pytest.approx(VISION_ALPHA, rel=1e-7), "max_alpha": 0.5,
                                 "only_in_target": 1, "only_in_source": 1, "not_floating": 1,
                                 "input_embedding": "model.embed_tokens.weight", "cmbc_capture_term": True}
    vision = report["components"]["vision_encoder"]
    assert (vision["numel"], vision["tensors"]) == (400, 2)
    assert vision["pda"] == pytest.approx(0.8) and vision["gfs"] == pytest.approx(0.7)
    assert vision["sensitivity"] == pytest.approx(0.15) and vision["sensitivity_variance"] == pytest.approx(0.25)
    assert vision["alignment"] == pytest.approx(0.53 / 0.7, rel=1e-7)
    assert vision["mean_alpha"] == vision["min_alpha"] == vision["max_alpha"] == pytest.approx(VISION_ALPHA)
    bridge = report["groups"]["cross_modal_bridge"]
    assert bridge["alignment"] == pytest.approx(0.65) and bridge["alpha"] == pytest.approx(0.325)
    assert bridge["cmbc"] == 0.5 and report["groups"]["language_model"]["alpha"] == 0.5
    assert report["tensors"]["visual.blocks.1.attn.qkv.weight"] == {
        "component": "vision_encoder", "stack": "vision", "layer": 1, "numel": 100, "pda": 0.5, "gfs": 0.4,
        "cmbc": None, "sensitivity": 0.3, "changed": True, "group": "vision_encoder",
        "alpha": pytest.approx(VISION_ALPHA)}
    # rounded to 8 significant digits: the same inputs give the same bytes
    assert report["summary"]["mean_alpha"] == float(f"{MEAN_ALPHA:.8g}")


def test_alphas_document(report):
    document = alphas_document(report)
    assert document["groups"] == {"vision_encoder": pytest.approx(VISION_ALPHA), "language_model": 0.5,
                                  "cross_modal_bridge": pytest.approx(0.325)}
    assert document["tensors"]["model.layers.0.mlp.up_proj.weight"] == 0.5
    assert document["kept_from_target"] == ["model.layers.1.norm.weight", "model.position_ids"]
    assert document["skipped_only_in_source"] == ["model.extra.weight"]


def test_summary_table(report):
    assert summary_table(report).splitlines() == [
        "| component          | tensors | params | PDA    | GFS    | CMBC   | A      | mean alpha | min    | max    |",
        "|--------------------|---------|--------|--------|--------|--------|--------|------------|--------|--------|",
        "| vision_encoder     | 2       | 400    | 0.8000 | 0.7000 | -      | 0.7571 | 0.2839     | 0.2839 | 0.2839 |",
        "| language_model     | 1       | 200    | 1.0000 | 1.0000 | -      | 1.0000 | 0.5000     | 0.5000 | 0.5000 |",
        "| cross_modal_bridge | 1       | 100    | 0.8000 | 0.6000 | 0.5000 | 0.6500 | 0.3250     | 0.3250 | 0.3250 |",
    ]


def test_markdown_report(report):
    text = markdown_report(report, ["heatmap_alpha.png"])
    assert text.startswith("# CMAAM merge analysis\n")
    assert "| strategy        | component " in text and "## Groups (component)" in text
    groups = text[text.index("## Groups"):].splitlines()
    assert "| cross_modal_bridge | 1       | 100    | 0.8000 | 0.6000 | 0.5000 | 0.6500 | 0.1000 | 0.0000 | 0.3250 |" \
        in groups
    for title, name in (("Only in the target (kept from the target): 1", "model.layers.1.norm.weight"),
                        ("Only in the source (skipped): 1", "model.extra.weight"),
                        ("Not floating point (copied from the target): 1", "model.position_ids")):
        assert f"## {title}\n\n- `{name}`\n" in text
    assert text.endswith("## Heatmaps\n\n![heatmap_alpha.png](heatmap_alpha.png)\n")


def test_heatmap_grid_cells(report):
    rows, columns, grid = heatmap_grid(report, "pda")
    assert rows == ["cross_modal_bridge", "language_model", "vision_encoder"] and columns == ["-", "0", "1"]
    assert grid == [[0.8, None, None], [None, 1.0, None], [None, 0.9, 0.5]]
    rows, columns, grid = heatmap_grid(report, "cmbc")  # only the bridge output has CMBC
    assert (rows, columns, grid) == (["cross_modal_bridge"], ["-"], [[0.5]])


def test_heatmap_rows_split_a_component_with_several_stacks():
    def tensor(stack, layer, value, numel):
        return {"component": "cross_modal_bridge", "stack": stack, "layer": layer, "alpha": value, "numel": numel}

    report = {"tensors": {"a": tensor("visual_expert", 2, 0.2, 10), "b": tensor("visual_expert", 2, 0.5, 30),
                          "c": tensor("bridge", None, 0.4, 5)}}
    rows, columns, grid = heatmap_grid(report, "alpha")
    assert rows == ["cross_modal_bridge:bridge", "cross_modal_bridge:visual_expert"] and columns == ["-", "2"]
    assert grid[0] == [0.4, None] and grid[1] == [None, pytest.approx((0.2 * 10 + 0.5 * 30) / 40)]


def test_written_files_reload(report, tmp_path):
    written = write_analysis(tmp_path / "analysis", report)
    assert sorted(p.name for p in written) == ["heatmap_alpha.png", "heatmap_scores.png", "report.json", "report.md"]
    assert json.loads((tmp_path / "analysis" / "report.json").read_text()) == report
    for name in ("heatmap_alpha.png", "heatmap_scores.png"):
        with Image.open(tmp_path / "analysis" / name) as image:
            assert image.format == "PNG" and min(image.size) > 100
    assert "![heatmap_scores.png](heatmap_scores.png)" in (tmp_path / "analysis" / "report.md").read_text()
    alphas = yaml.safe_load(write_alphas(tmp_path / "alphas.yaml", report).read_text())
    assert alphas == json.loads(json.dumps(alphas_document(report)))
