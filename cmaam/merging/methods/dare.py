"""DARE (Yu et al. 2023, arXiv:2311.03099), as mergekit's ``dare_linear`` and ``dare_ties``.

Each task-vector entry is kept with probability ``density`` (seeded ``torch.Generator``), then the
survivors are rescaled: by default like mergekit (L1 norm of the task vector restored),
or by 1/density as in the paper with ``rescale_mode="inverse_density"``.
"""

from __future__ import annotations

from cmaam.merging.methods.generalized import define_task_arithmetic

dare_linear = define_task_arithmetic(
    "dare_linear",
    "DARE: seeded random drop with rescale, then task arithmetic.",
    normalize=False, rescale=True, sparsification="random")

dare_ties = define_task_arithmetic(
    "dare_ties",
    "DARE-TIES: seeded random drop with rescale, then TIES sign election.",
    normalize=False, rescale=True, sparsification="random", consensus="sum")
