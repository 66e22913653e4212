"""The structured search space: how many and which blocks go, and the uniform widths of the rest.

A point is a ``Plan`` with its dropped blocks explicit: a count n (0 .. L-1), which n blocks, the
KV groups removed per kept block (``Layout.valid_kv_removals``: every head count transformers
accepts) and the MLP channels removed per kept block (the kept width a multiple of the Planner's
``align``, as the families' paths). Widths stay uniform so that every plan is a standard config
(see ``surgery``). Speed depends on the shape (n, kv, channels) only; which blocks go changes the
quality alone.

Strategies see the space two ways: as numbers (``decode``: a count of blocks, dropped in Block
Influence order, and an ordinal index per width, for Optuna's samplers) and as moves (``mutate``:
for evolution, which searches the set of blocks itself: a swap of a dropped and a kept block keeps
the shape and its measured speed, other moves change one count by a step). Under a speed-up
target the channels are not searched but fitted: ``channels_for`` gives the least removal a
latency model predicts to reach the target for the depth and heads (``latency``), so that plans
land on the speed boundary, where the best plan is.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from autoprune.structured.layout import Layout, Plan

Fit = Callable[[int, int], int]  # (blocks dropped, KV groups removed) -> MLP channels removed


@dataclass(frozen=True)
class Space:
    layout: Layout
    kv: tuple[int, ...]  # KV groups that may be removed per block, 0 first
    channels: tuple[int, ...]  # MLP channels that may be removed per block, 0 first, increasing
    order: tuple[int, ...]  # blocks by Block Influence, lowest first (ShortGPT's order)

    @classmethod
    def of(cls, layout: Layout, channel_removals: list[int], order: list[int]) -> "Space":
        kv = tuple(layout.valid_kv_removals()) if layout.attention is not None else (0,)
        channels = (0, *channel_removals) if layout.mlp is not None else (0,)
        return cls(layout, kv, channels, tuple(order))

    @property
    def max_blocks(self) -> int:
        return self.layout.blocks - 1

    def plan(self, blocks: int, kv: int, channels: int, drop: list[int] | None = None) -> Plan:
        """A plan dropping ``drop`` (default: the ``blocks`` lowest in Block Influence)."""
        drop = self.order[:blocks] if drop is None else drop
        return Plan(blocks, kv, channels, tuple(sorted(drop)))

    def decode(self, blocks: int, kv_index: int, channel_index: int) -> Plan:
        """From numbers (Optuna's): a count of blocks in Block Influence order and an index per width."""
        return self.plan(blocks, self.kv[kv_index], self.channels[channel_index])

    def widest(self) -> Plan:
        return self.plan(self.max_blocks, self.kv[-1], self.channels[-1])

    def random(self, rng: random.Random, max_blocks: int | None = None, channels_for: Fit | None = None) -> Plan:
        """A random shape up to ``max_blocks`` blocks, its blocks in Block Influence order; with
        ``channels_for``, the channels it gives for the depth and heads."""
        n, kv = rng.randint(0, self.max_blocks if max_blocks is None else max_blocks), rng.choice(self.kv)
        return self.plan(n, kv, channels_for(n, kv) if channels_for else rng.choice(self.channels))

    def mutate(self, plan: Plan, rng: random.Random, max_blocks: int | None = None,
               channels_for: Fit | None = None) -> Plan:
        """One or two random moves: swap a dropped and a kept block; drop one more block (the kept
        one of lowest Block Influence, or any) or restore one; one step of KV groups; without
        ``channels_for``, one to four steps of channels (with it, the channels it gives)."""
        lay = self.layout
        top = self.max_blocks if max_blocks is None else max_blocks
        drop = set(plan.drop)
        kv, ch = self.kv.index(plan.kv_groups), self.channels.index(plan.channels)
        moves = ["depth"] + ["swap"] * (0 < len(drop) < lay.blocks) \
            + ["channels"] * (len(self.channels) > 1 and channels_for is None) + ["heads"] * (len(self.kv) > 1)
        for move in rng.sample(moves, k=min(len(moves), rng.choice((1, 1, 2)))):
            kept = [b for b in self.order if b not in drop]
            if move == "swap":
                if not 0 < len(drop) < lay.blocks:  # the other move emptied or filled the set
                    continue
                drop.remove(rng.choice(sorted(drop)))
                drop.add(rng.choice(kept))
            elif move == "depth":
                if drop and (len(drop) >= top or rng.random() < 0.5):
                    drop.remove(rng.choice(sorted(drop)))
                else:
                    drop.add(kept[0] if rng.random() < 0.5 else rng.choice(kept))
            elif move == "channels":
                ch = min(max(ch + rng.choice((-4, -2, -1, 1, 2, 4)), 0), len(self.channels) - 1)
            else:
                kv = min(max(kv + rng.choice((-1, 1)), 0), len(self.kv) - 1)
        channels = channels_for(len(drop), self.kv[kv]) if channels_for else self.channels[ch]
        return self.plan(len(drop), self.kv[kv], channels, sorted(drop))
