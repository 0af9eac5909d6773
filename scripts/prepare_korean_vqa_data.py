#!/usr/bin/env python
"""Prepare a Korean VQA corpus as train/val/test VQA JSONL (see ``finetune.data_prep`` and docs/finetune.md)."""

from cmaam.core.cli import run_cli
from finetune.data_prep import main

if __name__ == "__main__":
    run_cli(main)
