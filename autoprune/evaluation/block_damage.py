"""Block-local damage: the model side of the RL allocation environment.

Notation: h_b the input of block b along the pruned path (h_0 cached once from the model),
y_b = block_b(h_b) with the block's pruned linears, y*_b the dense model's output of block b
(cached). The error after a step is
    e = sum ||y_b - y*_b||^2 / sum ||y*_b||^2      (over the cached tokens)
and a step's damage is e minus the error after the previous step, so an episode's damages
add up to the error at the last block's output. Only the unit's block runs forward.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from autoprune.evaluation.ratio_proxy import RatioProxy
from autoprune.models.layers import decoder_blocks
from autoprune.pruning.allocation import outlier_ratio
from autoprune.pruning.engine import capture_block_inputs
from autoprune.pruning.metrics import wanda


def _forward(block: torch.nn.Module, inputs: list[list]) -> list[Tensor]:
    outs = []
    for hidden, args, kwargs in inputs:
        out = block(hidden, *args, **kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


class BlockDamage:
    """Implements ``autoprune.search.rl_env.Damage`` on a ``RatioProxy``'s model (one episode at a time)."""

    def __init__(self, proxy: RatioProxy, windows: Tensor, batch_size: int = 8):
        self.proxy = proxy
        model = proxy.evaluator.model
        _, self.modules = decoder_blocks(model)
        proxy.evaluator.restore()
        with torch.no_grad():
            self.h0 = capture_block_inputs(model, self.modules[0], windows, batch_size)
            self.dense: list[list[Tensor]] = []
            h = [list(x) for x in self.h0]
            for block in self.modules:
                outs = _forward(block, h)
                self.dense.append(outs)
                for item, out in zip(h, outs):
                    item[0] = out
        self.reset()

    def full_name(self, block: int, name: str) -> str:
        return next(full for full in self.proxy.blocks[block] if full.endswith("." + name))

    def reset(self) -> None:
        self.proxy.evaluator.restore()
        self.block, self.hidden, self.error = 0, [list(x) for x in self.h0], 0.0

    @torch.no_grad()
    def _error(self, block: int) -> tuple[float, list[Tensor]]:
        outs = _forward(self.modules[block], self.hidden)
        num = sum(((o - d) ** 2).sum().item() for o, d in zip(outs, self.dense[block]))
        den = sum((d ** 2).sum().item() for d in self.dense[block])
        return num / den, outs

    @torch.no_grad()
    def step(self, unit, ratio: float) -> float:
        """Prune ``unit`` to ``ratio``; the error it adds at its block's output (units in depth order)."""
        while self.block < unit.block:  # move the pruned path on to the unit's block
            _, outs = self._error(self.block)
            for item, out in zip(self.hidden, outs):
                item[0] = out
            self.block += 1
        for name in unit.names:
            self.proxy.prune_layer(self.full_name(unit.block, name), ratio)
        error, _ = self._error(unit.block)
        added, self.error = error - self.error, error
        return added

    @torch.no_grad()
    def features(self, units) -> np.ndarray:
        """Per unit: OWL outlier ratio (M = 5) of its Wanda scores, and its damage alone at the target."""
        target = self.proxy.policy.sparsity
        X = self.proxy.evaluator.stats.X
        rows = []
        for unit in units:
            names = [self.full_name(unit.block, n) for n in unit.names]
            lins = self.proxy.evaluator.linears
            outlier = outlier_ratio([wanda(lins[n].weight.data, X[n], None) for n in names], 5.0)
            self.reset()
            self.hidden = [[d_prev, *x[1:]] for d_prev, x in zip(self._dense_input(unit.block), self.h0)]
            self.block = unit.block
            for n in names:
                self.proxy.prune_layer(n, target)
            alone, _ = self._error(unit.block)
            rows.append([100 * outlier, 100 * alone])
        self.reset()
        return np.array(rows, dtype=np.float32)

    def _dense_input(self, block: int) -> list[Tensor]:
        return [x[0] for x in self.h0] if block == 0 else self.dense[block - 1]
