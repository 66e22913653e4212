"""KL(dense || pruned) of the next-token distributions, averaged over tokens.

The dense model's log-probabilities are computed once (``DenseReference``) and reused for every
candidate, so a candidate costs one forward pass of the pruned model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DenseReference:
    """Dense log-probabilities on fixed windows, kept on the model's device in ``dtype``."""

    def __init__(self, model: nn.Module, windows: Tensor, batch_size: int = 8, dtype: torch.dtype = torch.float32):
        self.windows = windows
        self.batch_size = batch_size
        dev = next(model.parameters()).device
        with torch.no_grad():
            self.logprobs = torch.cat([F.log_softmax(model(b.to(dev), use_cache=False).logits.float(), dim=-1).to(dtype)
                                       for b in windows.split(batch_size)])


def kl_sum(logp: Tensor, logits: Tensor) -> Tensor:
    """Summed over tokens, KL(p || softmax(logits)) with ``logp`` (b, T, V) the dense log-probabilities;
    ``logits`` (..., b, T, V) may carry leading candidate dimensions, which are kept."""
    logq = F.log_softmax(logits.float(), dim=-1)
    logp = logp.float()
    return (logp.exp() * (logp - logq)).sum(dim=tuple(range(logq.dim() - logp.dim(), logq.dim())))


@torch.no_grad()
def kl_to_dense(model: nn.Module, reference: DenseReference, windows: int | None = None) -> float:
    """Mean over tokens of sum_v p_dense(v) (log p_dense(v) - log p_model(v)).

    ``windows`` uses only the first ``windows`` reference windows (a cheaper, lower fidelity);
    they are forwarded ``reference.batch_size`` at a time, however few they are.
    """
    dev = next(model.parameters()).device
    ids, ref = reference.windows[:windows], reference.logprobs[:windows]
    total = 0.0
    for batch, logp in zip(ids.split(reference.batch_size), ref.split(reference.batch_size)):
        total += kl_sum(logp, model(batch.to(dev), use_cache=False).logits).item()
    return total / ids.numel()
