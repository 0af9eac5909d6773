"""Mixture-of-Experts models built from dense ones, as mergekit-moe: ``build_moe(config, output)``."""

from cmaam.merging.moe.build import build_moe
from cmaam.merging.moe.config import Expert, MoEConfig, load_moe_config, parse_moe_config

__all__ = ["Expert", "MoEConfig", "build_moe", "load_moe_config", "parse_moe_config"]
