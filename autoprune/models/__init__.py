"""Load causal language models and find the linear layers a policy may prune."""

from autoprune.models.layers import decoder_blocks, prunable_linears
from autoprune.models.loading import LoadedModel, load_model, resolve_device

__all__ = ["LoadedModel", "decoder_blocks", "load_model", "prunable_linears", "resolve_device"]
