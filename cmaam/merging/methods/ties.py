"""TIES merging (Yadav et al. 2023, arXiv:2306.01708), as mergekit's ``ties``.

Trim each task vector to its ``density`` largest magnitudes, elect the sign of the weighted sum,
and average the agreeing entries (normalize on by default).
"""

from __future__ import annotations

from cmaam.merging.methods.generalized import define_task_arithmetic

ties = define_task_arithmetic(
    "ties",
    "TIES: magnitude trim, sign election by weighted sum, disjoint weighted mean.",
    normalize=True, rescale=False, sparsification="magnitude", consensus="sum")
