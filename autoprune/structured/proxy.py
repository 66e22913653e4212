"""A plan's quality, cheaply: a shrunk copy built from the dense model's statistics, scored on a few windows.

``shrink_model`` calibrates block by block on the outputs of the already shrunk blocks before it:
several forward passes of the calibration windows per plan (tens of seconds on SmolLM2-135M). A
search scores tens of plans, so its proxy is one-shot instead: one pass of the dense model over
the calibration windows records, for every block, the input moments of the layers that read the
structures (o_proj: mean, variance and Gram S of its input; down_proj: the same) and the blocks'
Influence. A plan's copy then needs no forward pass at all: the plan's blocks go, and in every kept
block the KV groups and MLP channels with the lowest FLAP fluctuation (``importance`` activation;
``obs``: SlimGPT's greedy OBS on the same Gram) go, o_proj / down_proj compensated by least squares
from the dense Gram (``reconstruct.compensate``). Its perplexity on a few proxy windows (never the
selection or evaluation windows) is the trial's loss. The finalists are then shrunk for real.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from autoprune.evaluation import perplexity
from autoprune.models.layers import decoder_blocks
from autoprune.structured.importance import ACTIVATION, OBS, InputMoments, Moments, block_influence, keep_top, obs_keep
from autoprune.structured.layout import Layout, Plan, discover
from autoprune.structured.reconstruct import compensate
from autoprune.structured.surgery import (apply_config, config_changes, drop_blocks, expand_slices, remove_channels,
                                          remove_kv_groups)


class OneShot:
    """Dense statistics of ``model`` on ``windows``, collected once; ``shrunk(plan)`` and ``loss(plan)``."""

    def __init__(self, model: nn.Module, windows: Tensor, proxy: Tensor, importance: str = ACTIVATION,
                 reconstruct: bool = True, damp: float = 0.01, batch_size: int = 8):
        self.model, self.proxy = model, proxy
        self.layout = discover(model)
        self.importance = importance if importance in (ACTIVATION, OBS) else ACTIVATION
        self.reconstruct, self.damp, self.batch_size = reconstruct, damp, batch_size
        self.moments: list[dict[str, Moments]] = []  # per block: "attention" / "mlp" -> moments of the reader's input
        self.influence = self._collect(windows)

    @torch.no_grad()
    def _collect(self, windows: Tensor) -> list[float]:
        lay = self.layout
        _, blocks = decoder_blocks(self.model)
        dev = next(self.model.parameters()).device
        collectors = []
        for block in blocks:
            cols = {}
            if lay.attention is not None:
                cols["attention"] = InputMoments({"o_proj": block.get_submodule(lay.attention).o_proj}, "o_proj")
            if lay.mlp is not None:
                cols["mlp"] = InputMoments({"down_proj": block.get_submodule(lay.mlp).down_proj}, "down_proj")
            collectors.append(cols)

        def run():
            for batch in windows.split(self.batch_size):
                self.model(batch.to(dev), use_cache=False)

        for cols in collectors:
            for c in cols.values():
                c.__enter__()
        try:
            influence = block_influence(blocks, run)
        finally:
            for cols in collectors:
                for c in cols.values():
                    c.__exit__(None, None, None)
        self.moments = [{k: next(iter(c.moments.values())) for k, c in cols.items()} for cols in collectors]
        return influence

    def _keep(self, W: Tensor, m: Moments, groups: int, remove: int) -> Tensor:
        if self.importance == OBS:
            return obs_keep(W, m.S, groups, remove, self.damp)
        return keep_top((m.var * W.float().pow(2).sum(0)).reshape(groups, -1).sum(1), remove)

    def _reader(self, W: Tensor, m: Moments, keep: Tensor) -> Tensor | None:
        return compensate(W, m.S, keep, self.damp) if self.reconstruct else None

    @torch.no_grad()
    def shrunk(self, plan: Plan) -> nn.Module:
        """A copy of the dense model shrunk by ``plan`` from the dense statistics."""
        lay: Layout = self.layout
        drop = list(plan.drop) or sorted(sorted(range(lay.blocks), key=lambda i: self.influence[i])[:plan.blocks])
        kept = [i for i in range(lay.blocks) if i not in drop]
        m = copy.deepcopy(self.model)
        changes = config_changes(m, lay, plan, kept)
        drop_blocks(m, lay, drop)
        for block, i in zip(m.get_submodule(lay.path), kept):
            if plan.kv_groups:
                attn, mom = block.get_submodule(lay.attention), self.moments[i]["attention"]
                keep = self._keep(attn.o_proj.weight.data, mom, lay.kv_heads, plan.kv_groups)
                cols = expand_slices(keep, lay.n_rep * lay.head_dim)
                remove_kv_groups(attn, lay, keep, self._reader(attn.o_proj.weight.data, mom, cols))
            if plan.channels:
                mlp, mom = block.get_submodule(lay.mlp), self.moments[i]["mlp"]
                keep = self._keep(mlp.down_proj.weight.data, mom, lay.channels, plan.channels)
                remove_channels(mlp, keep, self._reader(mlp.down_proj.weight.data, mom, keep))
        apply_config(m, changes)
        return m

    def loss(self, plan: Plan) -> float:
        """Perplexity of the one-shot copy on the proxy windows."""
        model = self.shrunk(plan)
        return perplexity(model, self.proxy, self.batch_size).perplexity

    def block_order(self) -> list[int]:
        """Blocks by Block Influence, lowest (ShortGPT's first to go) first."""
        return sorted(range(self.layout.blocks), key=lambda i: self.influence[i])
