"""CMA-ES search of merge recipes for text LLMs: genomes, in-memory merging, fitness, Ray evaluation."""

from cmaam.search.genome import GenomeLayout, GenomeSpec
from cmaam.search.evolution import EvolveConfig, SearchResult, load_config, parse_config, run_search

__all__ = ["EvolveConfig", "GenomeLayout", "GenomeSpec", "SearchResult", "load_config", "parse_config", "run_search"]
