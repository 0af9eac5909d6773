"""Task arithmetic (Ilharco et al. 2023, arXiv:2212.04089), as mergekit's ``task_arithmetic``.

base + lambda * sum_i w_i (x_i - base); a negative weight subtracts (negates) a task vector.
"""

from __future__ import annotations

from cmaam.merging.methods.generalized import define_task_arithmetic

task_arithmetic = define_task_arithmetic(
    "task_arithmetic",
    "Task arithmetic: add weighted task vectors to the base (normalize off by default).",
    normalize=False, rescale=False)
