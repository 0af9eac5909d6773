"""mergekit's newer methods end to end: the same YAML through cmaam.mergekit and mergekit's run_merge on tiny
Llama/Mistral/Qwen2 families, every merged tensor within 1e-6."""

from __future__ import annotations

import pytest

from cmaam.core.options import ExecutionOptions
from cmaam.io import CheckpointReader
from cmaam.merging.config_merge import merge_from_config
from merging_helpers import max_differences, run_mergekit, write_yaml

mergekit_merge = pytest.importorskip("mergekit.merge", reason="mergekit is a dev dependency")

CONFIGS = {
    # optional base: task vectors interpolated, per-model weight gradient over the layers, row-wise
    "nuslerp": """
merge_method: nuslerp
base_model: $base
models:
  - model: $ft1
    parameters: {weight: [0.2, 0.8]}
  - model: $ft2
    parameters: {weight: 0.5}
parameters: {nuslerp_flatten: false, nuslerp_row_wise: true}
dtype: float32
""",
    # no base: the models themselves are interpolated
    "nuslerp_no_base": """
merge_method: nuslerp
models:
  - model: $ft1
    parameters: {weight: 0.3}
  - model: $ft2
    parameters: {weight: 0.7}
dtype: float32
""",
    "multislerp": """
merge_method: multislerp
base_model: $base
models:
  - model: $ft1
    parameters:
      weight:
        - filter: mlp
          value: 0.8
        - value: 0.4
  - model: $ft2
    parameters: {weight: 0.6}
dtype: float32
""",
    "multislerp_no_base": """
merge_method: multislerp
models:
  - model: $base
    parameters: {weight: 1.0}
  - model: $ft1
    parameters: {weight: 2.0}
  - model: $ft2
    parameters: {weight: 1.0}
parameters: {normalize_weights: false}
dtype: float32
""",
    # mergekit ignores the base role: the base is averaged with the others
    "karcher": """
merge_method: karcher
base_model: $base
models:
  - model: $ft1
  - model: $ft2
parameters: {max_iter: 20, tol: 1.0e-7}
dtype: float32
""",
    "sce": """
merge_method: sce
base_model: $base
models:
  - model: $ft1
  - model: $ft2
parameters: {select_topk: [0.3, 0.9]}
dtype: float32
""",
    "nearswap": """
merge_method: nearswap
base_model: $base
models:
  - model: $ft1
parameters: {t: 0.002}
dtype: float32
""",
    "arcee_fusion": """
merge_method: arcee_fusion
base_model: $base
models:
  - model: $ft1
dtype: float32
""",
    "ram": """
merge_method: ram
base_model: $base
models:
  - model: $ft1
  - model: $ft2
parameters: {epsilon: 0.002}
dtype: float32
""",
    "ramplus_tl": """
merge_method: ramplus_tl
base_model: $base
models:
  - model: $ft1
  - model: $ft2
parameters: {epsilon: 0.002, r: 0.5, alpha: 0.5}
dtype: float32
""",
}
CASES = [(name, "llama") for name in CONFIGS] + [
    ("nuslerp", "mistral"), ("sce", "mistral"), ("arcee_fusion", "mistral"), ("karcher", "mistral"),
    ("multislerp", "qwen2"), ("nearswap", "qwen2"), ("ramplus_tl", "qwen2"), ("nuslerp_no_base", "qwen2"),
]


@pytest.mark.parametrize("method,model_type", CASES, ids=[f"{m}-{t}" for m, t in CASES])
def test_yaml_matches_mergekit(method, model_type, family, tmp_path):
    models = family(model_type)
    config = write_yaml(tmp_path, CONFIGS[method], models)
    merge_from_config(config, tmp_path / "ours", ExecutionOptions(device="cpu", progress=False))
    run_mergekit(config, tmp_path / "mergekit")
    differences = max_differences(tmp_path / "ours", tmp_path / "mergekit")
    worst = max(differences, key=differences.get)
    assert differences[worst] <= 1e-6, (worst, differences[worst])
    # the merge moved away from every input (guards against comparing two copies of one input)
    merged = CheckpointReader(tmp_path / "ours")
    name = "model.layers.1.mlp.up_proj.weight"
    for key in ("base", "ft1", "ft2"):
        assert (merged.get(name) - CheckpointReader(models[key]).get(name)).abs().max().item() > 1e-5, key
