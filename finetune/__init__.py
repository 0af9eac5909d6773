"""Fine-tuning VLMs on VQA data: Korean corpus preparation, a synthetic VQA set, LoRA / full training."""

import cmaam  # noqa: F401  (first: Ctrl-C during the start-up imports of python -m finetune.X gives one line)
