"""Fast proxy evaluation: many policies on one model, statistics and dense reference computed once.

A ``ProxyEvaluator`` holds the model, a copy of its dense prunable weights, the one-shot
calibration statistics and the dense model's next-token distribution on a few proxy windows.
``evaluate(policy)`` prunes one-shot with the cached statistics, measures the proxy loss (KL to
dense, or perplexity) on the first ``batches`` proxy batches, and restores the dense weights.
``evaluate(policy, sequential=True)`` prunes by the full sequential protocol instead (block by
block, statistics re-collected on the calibration windows as earlier blocks are pruned; the
dense gradient statistics are reused): about a second on a small model rather than milliseconds,
but it ranks policies as the pruned model that ``autoprune prune`` makes will rank them. One-shot
and sequential pruning can disagree: metrics that read G gain more from the sequential protocol.

``evaluate_many(policies)`` scores several one-shot candidates with one forward pass per proxy
batch (``autoprune.evaluation.stacked``): on a GPU, where a small model's forward is bound by
kernel launches, that is most of a candidate's cost.

Two policies that induce the same masks give the same pruned model (the update, if any, is a
deterministic function of the mask and the statistics), so results are cached by a hash of all
masks: a repeated mask costs the mask computation, never a forward pass. Expression metrics are
first checked on a probe layer (the largest): non-finite or row-constant scores fail at once.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import replace

import torch
from torch import Tensor, nn

from autoprune.errors import UserError
from autoprune.messages import ProxyResult
from autoprune.evaluation.kl import DEFAULT_TOP, DenseReference, kl_to_dense
from autoprune.evaluation.perplexity import perplexity, window_nll
from autoprune.evaluation.stacked import stacked_linears
from autoprune.pruning.engine import (CalibrationStats, LayerCache, apply_policy, blocks_linears, collect_gradients,
                                     collect_hessians, gradient_windows, hessian_store, prune_sequential)
from autoprune.pruning.metrics import NAMED, SOLVER_METRICS, needs_gradients, needs_hessian, resolve_metric
from autoprune.pruning.policy import Policy

OBJECTIVES = ("kl", "ppl")


class ProxyEvaluator:
    def __init__(self, model: nn.Module, stats: CalibrationStats, proxy_windows: Tensor,
                 objective: str = "kl", batch_size: int = 8, cache: bool = True, proxy_batch: int | None = None,
                 calib_windows: Tensor | None = None, reference_top: int | None = DEFAULT_TOP):
        """``batch_size`` windows go through the model at a time; fidelity is counted in proxy
        batches of ``proxy_batch`` windows (default ``batch_size``), so a low-fidelity rung can be
        smaller than a forward batch. ``calib_windows`` are the windows ``stats`` came from; the
        sequential protocol needs them. ``reference_top``: dense tokens kept per position for the KL
        (``autoprune.evaluation.kl``; None keeps the full distributions)."""
        if objective not in OBJECTIVES:
            raise UserError(f"unknown proxy objective {objective!r} (choose {', '.join(OBJECTIVES)})")
        if proxy_batch is not None and proxy_batch < 1:
            raise UserError("proxy batch must be at least one window")
        self.model = model
        self.stats = stats
        self.windows = proxy_windows
        self.calib_windows = calib_windows
        self.objective = objective
        self.batch_size = batch_size
        self.proxy_batch = proxy_batch or batch_size
        self.linears = {n: lin for bl in blocks_linears(model) for n, lin in bl.items()}
        self._dense = {n: lin.weight.data.clone() for n, lin in self.linears.items()}
        self.reference = DenseReference(model, proxy_windows, batch_size, top=reference_top) if objective == "kl" else None
        self.cache = cache
        self.layer_cache = LayerCache() if cache else None  # reconstructed layers, for updates
        self._results: dict[tuple, ProxyResult] = {}
        self.cache_hits = 0
        self.prepared = 0.0  # seconds spent by ``require``, taken into the next result's ``prepared``
        self.probe = max(self.linears, key=lambda n: self.linears[n].weight.numel())
        gen = torch.Generator().manual_seed(0)
        self._hash_keys = {n: torch.randint(0, 2**32, (lin.weight.shape[1], 2), generator=gen, dtype=torch.float64)
                           .to(lin.weight.device) for n, lin in self.linears.items()}

    def suggested_per_forward(self, memory: int = 2 * 2**30, most: int = 16) -> int:
        """Candidates per stacked forward worth asking for: 1 on a CPU (its forward is compute-bound,
        stacking gains nothing) or with experts (they cannot be stacked), else as many as fit
        ``memory`` bytes of stacked weights, at most ``most``."""
        weights = list(self._dense.values())
        if not weights or weights[0].device.type == "cpu" or any(u.kind == "expert" for u in self.linears.values()):
            return 1
        size = sum(W.numel() * W.element_size() for W in weights)
        return max(1, min(most, memory // max(size, 1)))

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
        sums = [(lin.weight.data != 0).to(torch.float64) @ self._hash_keys[n] for n, lin in self.linears.items()]
        return hashlib.blake2b(torch.cat(sums).cpu().numpy().tobytes(), digest_size=16).hexdigest()  # one sync

    def require(self, policy: Policy) -> None:
        """Collect, on first need, the statistics ``policy`` reads beyond X: the gradient statistic G
        (on ``engine.gradient_windows``) for metrics that read it; the layers' Hessians for a weight
        update or the terminals Hd, Hi. A worker starts scoring candidates without them, and a
        search that never needs them never pays for them."""
        if self.calib_windows is None:
            return
        t0 = time.perf_counter()
        if self.stats.grads is None and needs_gradients(policy.metric):
            self.restore()
            self.stats.grads = collect_gradients(self.model, gradient_windows(self.calib_windows), self.batch_size,
                                                 progress=False)
        hessian = policy.update != "none" or needs_hessian(policy.metric)
        if hessian and any(st.H is None for st in self.stats.layers.values()):
            self.restore()
            hessians = collect_hessians(self.model, self.calib_windows, self.batch_size, hessian_store(self.model))
            for name, st in self.stats.layers.items():
                st.set_hessian(hessians[name])
        self.prepared += time.perf_counter() - t0

    def check_scores(self, metric: str) -> str | None:
        """Why an expression metric is unusable on the probe layer (None when it is fine)."""
        if metric in NAMED or metric in SOLVER_METRICS:
            return None
        self.require(Policy(metric=metric))
        W = self._dense[self.probe]
        G = self.stats.grads[self.probe] if self.stats.grads else None
        st = self.stats.layers[self.probe]
        s = resolve_metric(metric)(W.float(), st.X.to(W.device), G, st.hessian_channels())
        if not torch.isfinite(s).all():
            return "non-finite scores"
        if (s.amax(dim=1) == s.amin(dim=1)).all():
            return "constant scores"
        return None

    def _prune(self, policy: Policy, batches: int | None, sequential: bool,
               t0: float) -> tuple[ProxyResult | None, tuple | None, str | None, float]:
        """Prune the model for ``policy`` (the caller restores it): (the result when the candidate
        is settled already, by unusable scores or masks scored before; cache key; mask digest;
        sparsity)."""
        self.require(policy)
        bad = self.check_scores(policy.metric)
        if bad is not None:
            return ProxyResult(math.inf, float("nan"), time.perf_counter() - t0, 0, bad), None, None, math.nan
        if sequential:
            report = prune_sequential(self.model, policy, self.calib_windows, self.batch_size, progress=False,
                                      grads=self.stats.grads)
        else:
            report = apply_policy(self.model, policy, self.stats, self.layer_cache)
        digest = self.mask_hash()
        key = (policy.update, sequential, digest, batches) if self.cache else None
        if key in self._results:
            self.cache_hits += 1
            return replace(self._results[key], seconds=time.perf_counter() - t0, cached=True), key, digest, report.sparsity
        return None, key, digest, report.sparsity

    def _settle(self, key: tuple | None, digest: str, sparsity: float, loss: float, tokens: int,
                seconds: float) -> ProxyResult:
        error = None if math.isfinite(loss) else "non-finite proxy loss"
        result = ProxyResult(loss if error is None else math.inf, sparsity, seconds, tokens, error, masks=digest)
        if key is not None:
            self._results[key] = result
        return result

    def _fidelity(self, batches: int | None) -> int | None:
        return None if batches is None or batches >= self.max_batches else batches

    def take_prepared(self, result: ProxyResult) -> ProxyResult:
        """``result`` with the statistics collection since the last result counted as ``prepared``."""
        if self.prepared:
            result, self.prepared = replace(result, prepared=self.prepared), 0.0
        return result

    @torch.no_grad()
    def evaluate(self, policy: Policy, batches: int | None = None, sequential: bool = False) -> ProxyResult:
        """Prune (one-shot, or by the sequential protocol), measure, restore. A failing candidate
        returns loss inf and its error."""
        return self.take_prepared(self._evaluate(policy, batches, sequential))

    def _evaluate(self, policy: Policy, batches: int | None, sequential: bool) -> ProxyResult:
        if sequential and self.calib_windows is None:
            raise UserError("the sequential protocol needs the calibration windows of the statistics")
        batches, t0 = self._fidelity(batches), time.perf_counter()
        try:
            done, key, digest, sparsity = self._prune(policy, batches, sequential, t0)
            if done is not None:
                return done
            loss, tokens = self.loss(batches)
            return self._settle(key, digest, sparsity, loss, tokens, time.perf_counter() - t0)
        except (RuntimeError, ValueError, UserError) as e:
            return ProxyResult(math.inf, float("nan"), time.perf_counter() - t0, 0, f"{type(e).__name__}: {e}")
        finally:
            self.restore()

    @torch.no_grad()
    def evaluate_many(self, policies: list[Policy], batches: int | None = None) -> list[ProxyResult]:
        """``evaluate`` of several policies (one-shot), the forward passes of those whose masks are
        new stacked into one per proxy batch. Same results up to float rounding; a candidate's
        ``seconds`` is its own pruning plus its share of the stacked forward."""
        batches = self._fidelity(batches)
        out: list[ProxyResult | None] = [None] * len(policies)
        stacked: dict[str, Tensor] = {}  # linear -> (len(policies), out, in) pruned weights, filled in order
        pending: list[tuple[int, tuple | None, str, float, float]] = []  # (index, cache key, digest, sparsity, s)
        repeats: list[tuple[int, tuple]] = []  # masks already pending in this group
        for i, policy in enumerate(policies):
            t0 = time.perf_counter()
            try:
                done, key, digest, sparsity = self._prune(policy, batches, False, t0)
                if done is not None:
                    out[i] = done
                elif key is not None and any(p[1] == key for p in pending):
                    repeats.append((i, key))
                else:
                    for n, lin in self.linears.items():
                        if n not in stacked:
                            stacked[n] = lin.weight.new_empty((len(policies), *lin.weight.shape))
                        stacked[n][len(pending)].copy_(lin.weight)
                    pending.append((i, key, digest, sparsity, time.perf_counter() - t0))
            except (RuntimeError, ValueError, UserError) as e:
                out[i] = ProxyResult(math.inf, float("nan"), time.perf_counter() - t0, 0, f"{type(e).__name__}: {e}")
            finally:
                self.restore()
        if pending:
            t0 = time.perf_counter()
            try:
                losses, tokens = self._stacked_loss({n: W[: len(pending)] for n, W in stacked.items()}, batches)
            except RuntimeError:  # e.g. out of memory for the stack: one at a time
                return [r if r is not None else self.evaluate(p, batches) for p, r in zip(policies, out)]
            share = (time.perf_counter() - t0) / len(pending)
            for (i, key, digest, sparsity, seconds), loss in zip(pending, losses):
                out[i] = self._settle(key, digest, sparsity, loss, tokens, seconds + share)
        for i, key in repeats:
            self.cache_hits += 1
            out[i] = replace(self._results[key], cached=True)
        if out:
            out[0] = self.take_prepared(out[0])
        return out

    def _stacked_loss(self, weights: dict[str, Tensor], batches: int | None) -> tuple[list[float], int]:
        """Proxy losses of the K candidates whose prunable weights are ``weights`` (K, out, in)."""
        n = len(self.windows) if batches is None else min(len(self.windows), batches * self.proxy_batch)
        K = next(iter(weights.values())).shape[0]
        dev = next(self.model.parameters()).device
        total = torch.zeros(K, dtype=torch.float64, device=dev)
        with stacked_linears(self.linears, weights):
            for start in range(0, n, self.batch_size):
                ids = self.windows[start:min(n, start + self.batch_size)].to(dev)
                logits = self.model(ids.repeat(K, 1), use_cache=False).logits
                logits = logits.view(K, ids.shape[0], *logits.shape[1:])
                if self.objective == "kl":
                    total += self.reference.kl_sum(logits, start, start + ids.shape[0]).double()
                else:
                    total += window_nll(logits.flatten(0, 1), ids.repeat(K, 1)).view(K, -1).sum(dim=1).double()
        seqlen = self.windows.shape[1]
        if self.objective == "kl":
            return (total / (n * seqlen)).tolist(), n * seqlen
        return torch.exp(total / (n * (seqlen - 1))).tolist(), n * (seqlen - 1)
