"""Block-local damage: the model side of the RL allocation environment.

Notation: h_b the input of block b along the pruned path (h_0 cached once from the model),
y_b = block_b(h_b) with the block's pruned linears, y*_b the dense model's output of block b
(cached). The error after a step is
    e = sum ||y_b - y*_b||^2 / sum ||y*_b||^2      (over the cached tokens)
and a step's damage is e minus the error after the previous step, so an episode's damages
add up to the error at the last block's output. Only the unit's block runs forward.

Every public call starts and ends with the model dense: the episode (the ratios chosen so far
in the current block, the pruned path's hidden states) lives here, and a step prunes the
block's chosen linears, forwards the block and puts the dense weights back. So other jobs on
the same model (a worker's ``evaluate``) may run between two steps.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from autoprune.evaluation.ratio_proxy import RatioProxy
from autoprune.models.layers import decoder_blocks
from autoprune.pruning.allocation import outlier_ratio
from autoprune.pruning.engine import block_args, capture_block_inputs
from autoprune.pruning.metrics import wanda


def _forward(block: torch.nn.Module, i: int, inputs: list[list]) -> list[Tensor]:
    """Block ``i`` on each item's hidden states, with its own arguments (``block_args``)."""
    outs = []
    for item in inputs:
        args, kwargs = block_args(item, i)
        out = block(item[0], *args, **kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return outs


class BlockDamage:
    """Implements ``autoprune.search.rl_env.Damage`` on a ``RatioProxy``'s model (one episode at a time)."""

    def __init__(self, proxy: RatioProxy, windows: Tensor, batch_size: int = 8):
        self.proxy = proxy
        model = proxy.evaluator.model
        _, self.modules = decoder_blocks(model)
        with torch.no_grad():
            self.h0 = capture_block_inputs(model, self.modules[0], windows, batch_size)
            self.dense: list[list[Tensor]] = []
            h = [list(x) for x in self.h0]
            for i, block in enumerate(self.modules):
                outs = _forward(block, i, h)
                self.dense.append(outs)
                for item, out in zip(h, outs):
                    item[0] = out
        self.reset()

    def full_name(self, block: int, name: str) -> str:
        return next(full for full in self.proxy.blocks[block] if full.endswith("." + name))

    def reset(self) -> None:
        self.block, self.hidden, self.error = 0, [list(x) for x in self.h0], 0.0
        self.chosen: dict[str, float] = {}  # full linear name -> ratio, in the current block
        self.outs: list[Tensor] | None = None  # the current block's pruned outputs after the last step

    @contextmanager
    def _pruned(self, ratios: dict[str, float]):
        """The named linears pruned to their ratios for the duration; their dense weights after."""
        lins = self.proxy.evaluator.linears
        saved = {n: lins[n].weight.data.clone() for n in ratios}
        try:
            for name, ratio in ratios.items():
                self.proxy.prune_layer(name, ratio)
            yield
        finally:
            for name, weight in saved.items():
                lins[name].weight.data.copy_(weight)

    def _error(self, block: int, hidden: list[list], ratios: dict[str, float]) -> tuple[float, list[Tensor]]:
        """Relative error of ``block``'s output from ``hidden`` with ``ratios`` applied, and the outputs."""
        with self._pruned(ratios):
            outs = _forward(self.modules[block], block, hidden)
        num = sum(((o - d) ** 2).sum().item() for o, d in zip(outs, self.dense[block]))
        den = sum((d ** 2).sum().item() for d in self.dense[block])
        return num / den, outs

    @torch.no_grad()
    def step(self, unit, ratio: float) -> float:
        """Prune ``unit`` to ``ratio``; the error it adds at its block's output (units in depth order)."""
        while self.block < unit.block:  # move the pruned path on to the unit's block
            outs = self.outs if self.outs is not None else self._error(self.block, self.hidden, self.chosen)[1]
            self.hidden = [[out, *item[1:]] for out, item in zip(outs, self.hidden)]
            self.block, self.chosen, self.outs = self.block + 1, {}, None
        self.chosen.update({self.full_name(unit.block, name): ratio for name in unit.names})
        error, self.outs = self._error(unit.block, self.hidden, self.chosen)
        added, self.error = error - self.error, error
        return added

    @torch.no_grad()
    def features(self, units) -> np.ndarray:
        """Per unit: OWL outlier ratio (M = 5) of its Wanda scores, and its damage alone at the target."""
        target = self.proxy.policy.sparsity
        X = self.proxy.evaluator.stats.X
        lins = self.proxy.evaluator.linears
        rows = []
        for unit in units:
            names = [self.full_name(unit.block, n) for n in unit.names]
            outlier = outlier_ratio([wanda(lins[n].weight.data, X[n], None) for n in names], 5.0)
            dense_in = [[x, *item[1:]] for x, item in zip(self._dense_input(unit.block), self.h0)]
            alone, _ = self._error(unit.block, dense_in, {n: target for n in names})
            rows.append([100 * outlier, 100 * alone])
        return np.array(rows, dtype=np.float32)

    def _dense_input(self, block: int) -> list[Tensor]:
        return [x[0] for x in self.h0] if block == 0 else self.dense[block - 1]
