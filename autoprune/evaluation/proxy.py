"""Fast proxy evaluation: many policies on one model, statistics and dense reference computed once.

A ``ProxyEvaluator`` holds the model, a copy of its dense prunable weights, the one-shot
calibration statistics and the dense model's next-token distribution on a few proxy windows.
``evaluate(policy)`` prunes one-shot with the cached statistics, measures the proxy loss (KL to
dense, or perplexity) on the first ``batches`` proxy batches, and restores the dense weights.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from autoprune.errors import UserError
from autoprune.evaluation.kl import DenseReference, kl_to_dense
from autoprune.evaluation.perplexity import perplexity
from autoprune.pruning.engine import CalibrationStats, apply_policy, blocks_linears
from autoprune.pruning.policy import Policy

OBJECTIVES = ("kl", "ppl")


@dataclass(frozen=True)
class ProxyResult:
    loss: float  # lower is better; inf when the candidate failed
    sparsity: float
    seconds: float
    tokens: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and math.isfinite(self.loss)


class ProxyEvaluator:
    def __init__(self, model: nn.Module, stats: CalibrationStats, proxy_windows: Tensor,
                 objective: str = "kl", batch_size: int = 8):
        if objective not in OBJECTIVES:
            raise UserError(f"unknown proxy objective {objective!r} (choose {', '.join(OBJECTIVES)})")
        self.model = model
        self.stats = stats
        self.windows = proxy_windows
        self.objective = objective
        self.batch_size = batch_size
        self.linears = {n: lin for bl in blocks_linears(model) for n, lin in bl.items()}
        self._dense = {n: lin.weight.data.clone() for n, lin in self.linears.items()}
        self.reference = DenseReference(model, proxy_windows, batch_size) if objective == "kl" else None

    @property
    def max_batches(self) -> int:
        return math.ceil(len(self.windows) / self.batch_size)

    def restore(self) -> None:
        for n, lin in self.linears.items():
            lin.weight.data.copy_(self._dense[n])

    def loss(self, batches: int | None = None) -> tuple[float, int]:
        """Proxy loss of the model as it is now, on the first ``batches`` proxy batches."""
        n = len(self.windows) if batches is None else min(len(self.windows), batches * self.batch_size)
        if self.objective == "kl":
            return kl_to_dense(self.model, self.reference, batches), self.windows[:n].numel()
        res = perplexity(self.model, self.windows[:n], self.batch_size)
        return res.perplexity, res.tokens

    @torch.no_grad()
    def evaluate(self, policy: Policy, batches: int | None = None) -> ProxyResult:
        """Prune one-shot, measure, restore. A failing candidate returns loss inf and its error."""
        t0 = time.perf_counter()
        try:
            report = apply_policy(self.model, policy, self.stats)
            loss, tokens = self.loss(batches)
            error = None if math.isfinite(loss) else "non-finite proxy loss"
            return ProxyResult(loss if error is None else math.inf, report.sparsity,
                               time.perf_counter() - t0, tokens, error)
        except (RuntimeError, ValueError, UserError) as e:
            return ProxyResult(math.inf, float("nan"), time.perf_counter() - t0, 0, f"{type(e).__name__}: {e}")
        finally:
            self.restore()
