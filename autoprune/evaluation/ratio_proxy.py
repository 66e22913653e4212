"""Ratio candidates at the cost of one forward pass: masks by threshold lookup, updates by level lookup.

For a fixed metric the order of the scores within each output row does not depend on the
sparsity, so ``RatioProxy`` ranks every row once:
    rank[i, j] = position of weight j among row i's scores, lowest first
and the mask at ratio r keeps ``rank >= k_i(r)``, with k_i the engine's per-row counts
(``pruned_per_row``): the very mask ``apply_policy`` builds, without scoring or sorting again.

With a SparseGPT update the kept weights change with the ratio, so (as EvoPress does) each
layer is pruned once at a ladder of levels and stored (``LevelDatabase``, in memory or as one
safetensors file per layer on disk); a candidate takes each layer at the level nearest its ratio.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from autoprune.errors import UserError
from autoprune.evaluation.proxy import ProxyEvaluator, ProxyResult
from autoprune.pruning.allocation import block_ratios, layer_ratios
from autoprune.pruning.engine import blocks_linears, model_sparsity, prune_linear
from autoprune.pruning.masks import clean_scores, pruned_per_row
from autoprune.pruning.metrics import resolve_metric
from autoprune.pruning.policy import Policy


def row_ranks(scores: Tensor) -> Tensor:
    """rank[i, j]: position of scores[i, j] in row i sorted ascending (NaN lowest, ties by column)."""
    order = torch.sort(clean_scores(scores), dim=1, stable=True).indices  # (rows, cols)
    dtype = torch.int16 if scores.shape[1] <= torch.iinfo(torch.int16).max else torch.int32
    ranks = torch.empty_like(order, dtype=dtype)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device, dtype=dtype).expand_as(order))
    return ranks


def ranks_mask(ranks: Tensor, ratio: float) -> Tensor:
    """Keep-mask at ``ratio``: the lowest ``pruned_per_row`` ranks of each row are pruned."""
    counts = pruned_per_row(ranks.shape[0], ranks.shape[1], ratio).to(ranks.device)
    return ranks >= counts.unsqueeze(1).to(ranks.dtype)


class LevelDatabase:
    """Each layer pruned (mask + update) at every level of a ladder, on disk when ``directory`` is set."""

    def __init__(self, evaluator: ProxyEvaluator, policy: Policy, levels: Sequence[float],
                 directory: Path | None = None, progress: bool = True):
        if any(st.H is None for st in evaluator.stats.layers.values()) and policy.update != "none":
            raise UserError("a weight-update level database needs the layers' Hessians (statistics collected "
                            "with hessian=True, or the evaluator's calibration windows)")
        evaluator.require(policy)
        self.levels = sorted({float(x) for x in levels} | {0.0})
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, Tensor] = {}
        grads = evaluator.stats.grads
        for name, lin in tqdm(evaluator.linears.items(), desc="level database", disable=not progress, leave=False):
            stack = []
            for level in self.levels:
                prune_linear(lin, level, policy, evaluator.stats.layers[name], grads[name] if grads else None)
                stack.append(lin.weight.data.clone().cpu())
                evaluator.restore()
            self._store(name, torch.stack(stack))  # (levels, out, in)

    def _file(self, name: str) -> Path:
        return self.directory / (re.sub(r"[^\w.-]", "_", name) + ".safetensors")

    def _store(self, name: str, stack: Tensor) -> None:
        if self.directory is None:
            self._memory[name] = stack
            return
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        save_file({f"level{i}": w.contiguous() for i, w in enumerate(stack)}, str(self._file(name)))

    def level_index(self, ratio: float) -> int:
        return min(range(len(self.levels)), key=lambda i: abs(self.levels[i] - ratio))

    def weight(self, name: str, ratio: float) -> Tensor:
        """The layer pruned at the level nearest ``ratio``."""
        i = self.level_index(ratio)
        if self.directory is None:
            return self._memory[name][i]
        from safetensors import safe_open

        with safe_open(str(self._file(name)), framework="pt") as f:
            return f.get_tensor(f"level{i}")


class RatioProxy:
    """Proxy-evaluate allocations of one metric (and update) on a ``ProxyEvaluator``'s model."""

    def __init__(self, evaluator: ProxyEvaluator, policy: Policy, levels: Sequence[float] | None = None,
                 level_dir: Path | None = None, progress: bool = True):
        if policy.nm is not None:
            raise UserError("ratio search needs an unstructured pattern (N:M fixes every layer's ratio)")
        self.evaluator = evaluator
        self.policy = policy
        self.blocks = blocks_linears(evaluator.model)
        self.ranks: dict[str, Tensor] = {}
        self.levels: LevelDatabase | None = None
        if policy.update != "none":
            ladder = levels if levels is not None else [i / 20 for i in range(20)]
            self.levels = LevelDatabase(evaluator, policy, ladder, level_dir, progress)
        else:
            evaluator.require(policy)
            metric, st, grads = resolve_metric(policy.metric), evaluator.stats, evaluator.stats.grads
            for name, lin in evaluator.linears.items():
                G = grads[name].float() if grads else None
                layer = st.layers[name]
                self.ranks[name] = row_ranks(metric(lin.weight.data.float(), layer.X.to(lin.weight.device), G,
                                                    layer.hessian_channels()))

    def matches(self, policy: Policy) -> bool:
        """True when ``policy`` differs from this proxy's only in its allocation."""
        p = self.policy
        return (policy.metric, policy.update, policy.pattern) == (p.metric, p.update, p.pattern)

    def ratios(self, policy: Policy) -> dict[str, float]:
        """Full linear name -> ratio for ``policy``'s allocation."""
        X = self.evaluator.stats.X if policy.allocation == "owl" else None
        return layer_ratios(policy, self.blocks, block_ratios(policy, self.blocks, X))

    @torch.no_grad()
    def prune_layer(self, name: str, ratio: float) -> None:
        """Prune one dense layer in place to ``ratio`` (``evaluator.restore()`` undoes it)."""
        lin = self.evaluator.linears[name]
        if self.levels is not None:
            lin.weight.data.copy_(self.levels.weight(name, ratio).to(lin.weight.device))
        elif ratio > 0:
            lin.weight.data.mul_(ranks_mask(self.ranks[name], ratio))

    @torch.no_grad()
    def evaluate(self, policy: Policy, batches: int | None = None) -> ProxyResult:
        """Like ``ProxyEvaluator.evaluate``; policies this proxy cannot look up are pruned from scratch."""
        if not self.matches(policy):
            return self.evaluator.evaluate(policy, batches)
        t0 = time.perf_counter()
        try:
            for name, ratio in self.ratios(policy).items():
                self.prune_layer(name, ratio)
            sparsity, _ = model_sparsity(self.evaluator.model)
            loss, tokens = self.evaluator.loss(batches)
            error = None if math.isfinite(loss) else "non-finite proxy loss"
            return ProxyResult(loss if error is None else math.inf, sparsity, time.perf_counter() - t0, tokens, error)
        except (RuntimeError, ValueError, UserError) as e:
            return ProxyResult(math.inf, float("nan"), time.perf_counter() - t0, 0, f"{type(e).__name__}: {e}")
        finally:
            self.evaluator.restore()
