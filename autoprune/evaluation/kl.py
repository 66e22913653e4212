"""KL(dense || pruned) of the next-token distributions, averaged over tokens.

The dense model's next-token distributions are computed once (``DenseReference``) and reused for
every candidate, so a candidate costs one forward pass of the pruned model.

Today's vocabularies (128k-262k tokens) make the full dense log-probabilities of a few proxy
windows larger than the model (16 x 512 tokens x 262,144 x 4 bytes = 8.6 GB). With ``top`` set,
the reference keeps, per token, the ``top`` most likely tokens' log-probabilities and the
probability mass of the rest (the tail), and the loss is the KL between the two distributions
coarsened the same way (the top tokens, one bucket for the tail):
    sum_{v in top} p_v log(p_v / q_v) + p_tail log(p_tail / q_tail),  q_tail = 1 - sum_{v in top} q_v
By the data-processing inequality it never exceeds the full KL, and it equals it when the tail
holds no mass; ``benchmarks/kl_topk.py`` measures how closely it ranks candidates as the full KL does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_TOP = 256  # dense tokens kept per position when the vocabulary is larger


class DenseReference:
    """Dense next-token distributions on fixed windows, on the model's device: in full
    (``logprobs`` (n, T, V)) when the vocabulary has at most ``top`` tokens or ``top`` is None,
    else the ``top`` log-probabilities, their token ids and the tail's log-mass."""

    def __init__(self, model: nn.Module, windows: Tensor, batch_size: int = 8, dtype: torch.dtype = torch.float32,
                 top: int | None = DEFAULT_TOP):
        self.windows = windows
        self.batch_size = batch_size
        dev = next(model.parameters()).device
        full, values, ids, tails = [], [], [], []
        with torch.no_grad():
            for b in windows.split(batch_size):
                logp = F.log_softmax(model(b.to(dev), use_cache=False).logits.float(), dim=-1)
                if top is None or top >= logp.shape[-1]:
                    full.append(logp.to(dtype))
                    continue
                v, i = logp.topk(top, dim=-1)
                values.append(v)
                ids.append(i.to(torch.int32))
                tails.append(_log1mexp(torch.logsumexp(v, dim=-1)))
                del logp
        self.logprobs = torch.cat(full) if full else None
        self.top_logprobs = torch.cat(values) if values else None  # (n, T, top)
        self.top_ids = torch.cat(ids) if ids else None
        self.tail = torch.cat(tails) if tails else None  # (n, T) log of the mass outside the top

    @property
    def bytes(self) -> int:
        held = [t for t in (self.logprobs, self.top_logprobs, self.top_ids, self.tail) if t is not None]
        return sum(t.numel() * t.element_size() for t in held)

    def kl_sum(self, logits: Tensor, start: int, stop: int) -> Tensor:
        """KL summed over the tokens of windows ``start:stop`` against ``logits`` (..., b, T, V);
        leading candidate dimensions are kept."""
        if self.logprobs is not None:
            return kl_sum(self.logprobs[start:stop], logits)
        logq = F.log_softmax(logits.float(), dim=-1)
        ids = self.top_ids[start:stop].long().expand(*logq.shape[:-1], -1)
        logq_top = logq.gather(-1, ids)
        logp_top, logp_tail = self.top_logprobs[start:stop], self.tail[start:stop]
        logq_tail = _log1mexp(torch.logsumexp(logq_top, dim=-1))
        kl = (logp_top.exp() * (logp_top - logq_top)).sum(-1) + logp_tail.exp() * (logp_tail - logq_tail)
        return kl.sum(dim=(-2, -1))


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends; -inf (no tail) is kept finite."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def kl_sum(logp: Tensor, logits: Tensor) -> Tensor:
    """Summed over tokens, KL(p || softmax(logits)) with ``logp`` (b, T, V) the dense log-probabilities;
    ``logits`` (..., b, T, V) may carry leading candidate dimensions, which are kept."""
    logq = F.log_softmax(logits.float(), dim=-1)
    logp = logp.float()
    return (logp.exp() * (logp - logq)).sum(dim=tuple(range(logq.dim() - logp.dim(), logq.dim())))


@torch.no_grad()
def kl_to_dense(model: nn.Module, reference: DenseReference, windows: int | None = None) -> float:
    """Mean over tokens of the KL of ``model``'s next-token distributions from the dense ones.

    ``windows`` uses only the first ``windows`` reference windows (a cheaper, lower fidelity);
    they are forwarded ``reference.batch_size`` at a time, however few they are.
    """
    dev = next(model.parameters()).device
    ids = reference.windows[:windows]
    total = 0.0
    for start in range(0, len(ids), reference.batch_size):
        batch = ids[start:start + reference.batch_size]
        total += reference.kl_sum(model(batch.to(dev), use_cache=False).logits, start, start + len(batch)).item()
    return total / ids.numel()
