"""Perplexity over non-overlapping windows: exp of the mean next-token NLL of every window."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    tokens: int  # predicted tokens: windows * (seqlen - 1)


def window_nll(logits: Tensor, windows: Tensor) -> Tensor:
    """Summed next-token NLL per window: logits (b, L, V), windows (b, L) -> (b,)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (b, L-1, V)
    return -logp.gather(-1, windows[:, 1:].unsqueeze(-1)).squeeze(-1).sum(dim=1)


@torch.no_grad()
def perplexity(model: nn.Module, windows: Tensor, batch_size: int = 8, progress: bool = False) -> PerplexityResult:
    dev = next(model.parameters()).device
    total, tokens = 0.0, 0
    for batch in tqdm(windows.split(batch_size), desc="perplexity", disable=not progress, leave=False):
        batch = batch.to(dev)
        total += window_nll(model(batch, use_cache=False).logits, batch).sum().item()
        tokens += batch.shape[0] * (batch.shape[1] - 1)
    nll = total / tokens
    return PerplexityResult(math.exp(nll), nll, tokens)
