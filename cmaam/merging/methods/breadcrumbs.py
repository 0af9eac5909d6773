"""Model Breadcrumbs (Davari & Belilovsky 2023, arXiv:2312.06795), as mergekit's ``breadcrumbs``
and ``breadcrumbs_ties``: drop the ``gamma`` fraction of largest-magnitude outliers and the smallest
entries, keeping ``density`` of each task vector.
"""

from __future__ import annotations

from cmaam.merging.methods.generalized import define_task_arithmetic

breadcrumbs = define_task_arithmetic(
    "breadcrumbs",
    "Model Breadcrumbs: outlier and small-magnitude trim, then task arithmetic.",
    normalize=False, rescale=False, sparsification="magnitude_outliers")

breadcrumbs_ties = define_task_arithmetic(
    "breadcrumbs_ties",
    "Model Breadcrumbs with TIES sign election.",
    normalize=False, rescale=False, sparsification="magnitude_outliers", consensus="sum")
