"""Fine-tuning VLMs on VQA data: Korean corpus preparation, a synthetic VQA set, LoRA / full training."""
