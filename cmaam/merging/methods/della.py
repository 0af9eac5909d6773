"""DELLA (Deep et al. 2024, arXiv:2406.11617), as mergekit's ``della`` and ``della_linear``:
per row, keep probabilities rise linearly with magnitude rank from density - epsilon to
density + epsilon (seeded), then rescale.
"""

from __future__ import annotations

from cmaam.merging.methods.generalized import define_task_arithmetic

della = define_task_arithmetic(
    "della",
    "DELLA: seeded magnitude-ranked random drop, then TIES sign election.",
    normalize=True, rescale=True, sparsification="della_magprune", consensus="sum")

della_linear = define_task_arithmetic(
    "della_linear",
    "DELLA without sign election: seeded magnitude-ranked drop, then task arithmetic.",
    normalize=False, rescale=True, sparsification="della_magprune")
