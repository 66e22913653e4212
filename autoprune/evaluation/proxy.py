"""Fast proxy evaluation: many policies on one model, statistics and dense reference computed once.

A ``ProxyEvaluator`` holds the model, a copy of its dense prunable weights, the one-shot
calibration statistics and the dense model's next-token distribution on a few proxy windows.
``evaluate(policy)`` prunes one-shot with the cached statistics, measures the proxy loss (KL to
dense, or perplexity) on the first ``batches`` proxy batches, and restores the dense weights.

Two policies that induce the same masks give the same pruned model (the update, if any, is a
deterministic function of the mask and the statistics), so results are cached by a hash of all
masks: a repeated mask costs the mask computation, never a forward pass. Expression metrics are
first checked on a probe layer (the largest): non-finite or row-constant scores fail at once.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from autoprune.errors import UserError
from autoprune.evaluation.kl import DenseReference, kl_to_dense
from autoprune.evaluation.perplexity import perplexity
from autoprune.pruning.engine import CalibrationStats, apply_policy, blocks_linears
from autoprune.pruning.metrics import NAMED, SOLVER_METRICS, resolve_metric
from autoprune.pruning.policy import Policy

OBJECTIVES = ("kl", "ppl")


@dataclass(frozen=True)
class ProxyResult:
    loss: float  # lower is better; inf when the candidate failed
    sparsity: float
    seconds: float
    tokens: int
    error: str | None = None
    cached: bool = False  # the same masks were evaluated before at this fidelity: no forward pass ran

    @property
    def ok(self) -> bool:
        return self.error is None and math.isfinite(self.loss)


class ProxyEvaluator:
    def __init__(self, model: nn.Module, stats: CalibrationStats, proxy_windows: Tensor,
                 objective: str = "kl", batch_size: int = 8, cache: bool = True, proxy_batch: int | None = None):
        """``batch_size`` windows go through the model at a time; fidelity is counted in proxy
        batches of ``proxy_batch`` windows (default ``batch_size``), so a low-fidelity rung can be
        smaller than a forward batch."""
        if objective not in OBJECTIVES:
            raise UserError(f"unknown proxy objective {objective!r} (choose {', '.join(OBJECTIVES)})")
        if proxy_batch is not None and proxy_batch < 1:
            raise UserError("proxy batch must be at least one window")
        self.model = model
        self.stats = stats
        self.windows = proxy_windows
        self.objective = objective
        self.batch_size = batch_size
        self.proxy_batch = proxy_batch or batch_size
        self.linears = {n: lin for bl in blocks_linears(model) for n, lin in bl.items()}
        self._dense = {n: lin.weight.data.clone() for n, lin in self.linears.items()}
        self.reference = DenseReference(model, proxy_windows, batch_size) if objective == "kl" else None
        self.cache = cache
        self._results: dict[tuple, ProxyResult] = {}
        self.cache_hits = 0
        self.probe = max(self.linears, key=lambda n: self.linears[n].weight.numel())
        gen = torch.Generator().manual_seed(0)
        self._hash_keys = {n: torch.randint(0, 2**32, (lin.weight.shape[1], 2), generator=gen, dtype=torch.float64)
                           .to(lin.weight.device) for n, lin in self.linears.items()}

    @property
    def max_batches(self) -> int:
        return math.ceil(len(self.windows) / self.proxy_batch)

    def restore(self) -> None:
        for n, lin in self.linears.items():
            lin.weight.data.copy_(self._dense[n])

    def loss(self, batches: int | None = None) -> tuple[float, int]:
        """Proxy loss of the model as it is now, on the first ``batches`` proxy batches."""
        n = len(self.windows) if batches is None else min(len(self.windows), batches * self.proxy_batch)
        if self.objective == "kl":
            return kl_to_dense(self.model, self.reference, n), self.windows[:n].numel()
        res = perplexity(self.model, self.windows[:n], self.batch_size)
        return res.perplexity, res.tokens

    def mask_hash(self) -> str:
        """A digest of which weights of every prunable linear are zero now, computed on the weights'
        device: per row, two sums of random 32-bit column keys over the kept weights (one float64
        matrix product, exact below 2^53), so 2 x rows numbers per layer leave the device instead
        of the whole mask. Two masks collide only if every row's kept columns have equal key sums
        under both key sets."""
        h = hashlib.blake2b(digest_size=16)
        for n, lin in self.linears.items():
            sums = (lin.weight.data != 0).to(torch.float64) @ self._hash_keys[n]  # (rows, 2)
            h.update(sums.cpu().numpy().tobytes())
        return h.hexdigest()

    def check_scores(self, metric: str) -> str | None:
        """Why an expression metric is unusable on the probe layer (None when it is fine)."""
        if metric in NAMED or metric in SOLVER_METRICS:
            return None
        W = self._dense[self.probe]
        G = self.stats.grads[self.probe] if self.stats.grads else None
        s = resolve_metric(metric)(W.float(), self.stats.layers[self.probe].X.to(W.device), G)
        if not torch.isfinite(s).all():
            return "non-finite scores"
        if (s.amax(dim=1) == s.amin(dim=1)).all():
            return "constant scores"
        return None

    @torch.no_grad()
    def evaluate(self, policy: Policy, batches: int | None = None) -> ProxyResult:
        """Prune one-shot, measure, restore. A failing candidate returns loss inf and its error."""
        t0 = time.perf_counter()
        try:
            bad = self.check_scores(policy.metric)
            if bad is not None:
                return ProxyResult(math.inf, float("nan"), time.perf_counter() - t0, 0, bad)
            report = apply_policy(self.model, policy, self.stats)
            batches = None if batches is None or batches >= self.max_batches else batches
            key = (policy.update, self.mask_hash(), batches) if self.cache else None
            if key in self._results:
                self.cache_hits += 1
                return replace(self._results[key], seconds=time.perf_counter() - t0, cached=True)
            loss, tokens = self.loss(batches)
            error = None if math.isfinite(loss) else "non-finite proxy loss"
            result = ProxyResult(loss if error is None else math.inf, report.sparsity,
                                 time.perf_counter() - t0, tokens, error)
            if key is not None:
                self._results[key] = result
            return result
        except (RuntimeError, ValueError, UserError) as e:
            return ProxyResult(math.inf, float("nan"), time.perf_counter() - t0, 0, f"{type(e).__name__}: {e}")
        finally:
            self.restore()
