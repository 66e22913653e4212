"""Decode time by plan shape, fitted to the measurements so far: where a search puts its plans.

Quality only falls as more is removed, so the best plan at a target speed-up lies on the speed
boundary. A search that picks the MLP width at random mostly overshoots it (a 1.3x search
measuring 1.5x plans). Instead, for a proposed depth and head count the search asks this model for
the least channel removal predicted to reach the target, and measures that plan: the measurement,
not the model, decides feasibility, and every measurement refits the model.

Notation: L blocks, n dropped, f = (L - n) / L the kept share of blocks, h the kept share of KV
groups (with their query heads), c the kept share of MLP channels, s the measured decode speed-up.

    1 / s  ~  a + f * (b + h * q + c * m)

a: what does not scale with depth (embedding, final norm, lm_head, sampling), b: a block's cost
that does not scale with its width (norms, rotary, attention over the cache, launch overhead),
q and m: its attention and MLP projections. Fitted by ridge least squares to every measured shape
(and the dense model, 1 / s = 1 by definition), pulled towards a prior from parameter counts (the
weights each decoded token reads), so that two measurements already give a usable model.
"""

from __future__ import annotations

import statistics

import torch
from torch import nn

from autoprune.structured.layout import Layout, Plan

RIDGE = 0.05  # pull of the prior, against the sum of squared errors of the measurements


def _features(layout: Layout, plan: Plan) -> list[float]:
    f = (layout.blocks - plan.blocks) / layout.blocks
    h = 1 - plan.kv_groups / layout.kv_heads if layout.kv_heads else 1.0
    c = 1 - plan.channels / layout.channels if layout.channels else 1.0
    return [1.0, f, f * h, f * c]


class LatencyModel:
    def __init__(self, model: nn.Module, layout: Layout):
        self.layout = layout
        out = model.get_output_embeddings()
        head = out.weight.numel() if out is not None else 0
        blocks = sum(p.numel() for p in model.get_submodule(layout.path).parameters())
        attn = mlp = 0
        block = model.get_submodule(layout.path)[0]
        if layout.attention is not None:
            attn = sum(p.numel() for p in block.get_submodule(layout.attention).parameters()) * layout.blocks
        if layout.mlp is not None:
            mlp = sum(p.numel() for p in block.get_submodule(layout.mlp).parameters()) * layout.blocks
        total = head + blocks
        self.prior = torch.tensor([head / total, (blocks - attn - mlp) / total, attn / total, mlp / total],
                                  dtype=torch.float64)
        self.theta = self.prior.clone()

    def fit(self, measured: dict[Plan, list[float]]) -> None:
        """Refit to ``measured`` (plan shape -> speed-ups, as ``Planner.measured``)."""
        rows = [_features(self.layout, Plan())]
        ys = [1.0]
        for shape, ups in measured.items():
            rows.append(_features(self.layout, shape))
            ys.append(1 / statistics.mean(ups))
        X, y = torch.tensor(rows, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
        # argmin ||X t - y||^2 + RIDGE ||t - prior||^2
        A = X.T @ X + RIDGE * torch.eye(4, dtype=torch.float64)
        self.theta = torch.linalg.solve(A, X.T @ y + RIDGE * self.prior)

    def speedup(self, plan: Plan) -> float:
        """The predicted decode speed-up of ``plan``'s shape."""
        t = float(torch.tensor(_features(self.layout, plan), dtype=torch.float64) @ self.theta)
        return 1 / t if t > 0 else float("inf")

    def least_channels(self, blocks: int, kv_groups: int, channels: tuple[int, ...], target: float) -> int:
        """The least of ``channels`` (removals, increasing) predicted to reach ``target``; the most when none does."""
        for c in channels:
            if self.speedup(Plan(blocks, kv_groups, c)) >= target:
                return c
        return channels[-1]

    def depth_for(self, target: float) -> int:
        """The fewest blocks whose dropping alone is predicted to reach ``target`` (L - 1 at most)."""
        return next((n for n in range(self.layout.blocks) if self.speedup(Plan(n)) >= target), self.layout.blocks - 1)
