"""Shared evaluators (MGSM, VQA), generation backends and language checks used across CMAAM."""

import cmaam  # noqa: F401  (first: Ctrl-C during the start-up imports of python -m eval.X gives one line)
