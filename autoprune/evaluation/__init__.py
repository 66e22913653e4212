"""Perplexity and KL divergence to the dense model."""

from autoprune.evaluation.kl import DenseReference, kl_to_dense
from autoprune.evaluation.perplexity import PerplexityResult, perplexity

__all__ = ["DenseReference", "PerplexityResult", "kl_to_dense", "perplexity"]
