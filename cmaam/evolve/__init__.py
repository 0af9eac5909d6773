"""CMA-ES search of merge recipes for text LLMs: genomes, in-memory merging, fitness, Ray evaluation."""

from cmaam.evolve.genome import GenomeLayout, GenomeSpec
from cmaam.evolve.search import EvolveConfig, SearchResult, load_config, parse_config, run_search

__all__ = ["EvolveConfig", "GenomeLayout", "GenomeSpec", "SearchResult", "load_config", "parse_config", "run_search"]
