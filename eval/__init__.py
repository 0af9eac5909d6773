"""Shared evaluators (MGSM, VQA), generation backends and language checks used across CMAAM."""
