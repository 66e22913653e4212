"""The structured search space: how many and which blocks go, and the uniform widths of the rest.

A point is a ``Plan`` with its dropped blocks explicit: a count n (0 .. L-1), which n blocks, the
KV groups removed per kept block (``Layout.valid_kv_removals``: every head count transformers
accepts) and the MLP channels removed per kept block (the kept width a multiple of the Planner's
``align``, as the families' paths). Widths stay uniform so that every plan is a standard config
(see ``surgery``). Speed depends on the shape (n, kv, channels) only; which blocks go changes the
quality alone.

Strategies see the space two ways: as numbers (``decode``: an ordinal index per width and a
priority per block, the n lowest priorities dropped, for Optuna's samplers) and as moves
(``mutate``: for evolution, a swap of a dropped and a kept block keeps the shape and its measured
speed, other moves change one count by a step).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from autoprune.structured.layout import Layout, Plan


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

    def decode(self, blocks: int, kv_index: int, channel_index: int, priority: list[float] | None) -> Plan:
        """From numbers: the ``blocks`` blocks of lowest ``priority`` (ties: Block Influence order) go."""
        drop = None
        if priority is not None:
            rank = {b: r for r, b in enumerate(self.order)}
            drop = sorted(range(self.layout.blocks), key=lambda b: (priority[b], rank[b]))[:blocks]
        return self.plan(blocks, self.kv[kv_index], self.channels[channel_index], drop)

    def bi_priority(self) -> list[float]:
        """Priorities that reproduce the Block Influence order (rank / L)."""
        out = [0.0] * self.layout.blocks
        for r, b in enumerate(self.order):
            out[b] = r / self.layout.blocks
        return out

    def widest(self) -> Plan:
        return self.plan(self.max_blocks, self.kv[-1], self.channels[-1])

    def random(self, rng: random.Random) -> Plan:
        """A random shape, its blocks in Block Influence order."""
        return self.plan(rng.randint(0, self.max_blocks), rng.choice(self.kv), rng.choice(self.channels))

    def mutate(self, plan: Plan, rng: random.Random) -> Plan:
        """One or two random moves: swap a dropped and a kept block; drop one more block (the kept
        one of lowest Block Influence, or any) or restore one; one to four steps of channels; one step
        of KV groups."""
        lay = self.layout
        drop = set(plan.drop)
        kv, ch = self.kv.index(plan.kv_groups), self.channels.index(plan.channels)
        moves = ["depth"] + ["swap"] * (0 < len(drop) < lay.blocks) + ["channels"] * (len(self.channels) > 1) \
            + ["heads"] * (len(self.kv) > 1)
        for move in rng.sample(moves, k=min(len(moves), rng.choice((1, 1, 2)))):
            kept = [b for b in self.order if b not in drop]
            if move == "swap":
                drop.remove(rng.choice(sorted(drop)))
                drop.add(rng.choice(kept))
            elif move == "depth":
                if drop and (len(drop) == self.max_blocks or rng.random() < 0.5):
                    drop.remove(rng.choice(sorted(drop)))
                else:
                    drop.add(kept[0] if rng.random() < 0.5 else rng.choice(kept))
            elif move == "channels":
                ch = min(max(ch + rng.choice((-4, -2, -1, 1, 2, 4)), 0), len(self.channels) - 1)
            else:
                kv = min(max(kv + rng.choice((-1, 1)), 0), len(self.kv) - 1)
        return self.plan(len(drop), self.kv[kv], self.channels[ch], sorted(drop))
