"""Plans that reach a measured decode speed-up, and the choice among them.

Speed depends on the shapes, not on the weights: a plan's speed-up is measured on a copy of the
dense model cut to the plan's shapes without calibration (``cut``), its greedy decode timed
interleaved with the dense model's (``speed.decode_speedup``). Each family is a path of plans
ordered by removal, along which speed grows:

    depth        n blocks dropped, n = 1 .. L-1 (ShortGPT)
    width        MLP channels only, the kept width a multiple of ``align``
    width+heads  the fewest removable KV groups, then MLP channels
    mixed        half the blocks the depth plan drops, then MLP channels

Bisection finds on each path the least removal whose measured speed-up reaches the target (about
log2 of the path's length measurements, cached per plan), and fresh measurements confirm it: the
plan was found because its measurement reached the target, so that measurement is biased up (one
timing on a CPU moves by 5% or more), and only measurements that chose nothing judge it. A family
whose largest plan falls short has no candidate, and a target no plan at all reaches is refused. ``select_plan`` then
shrinks each candidate for real (calibrated, reconstructed) and keeps the one with the lowest
perplexity on the selection windows (never the evaluation data).
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from autoprune.errors import UserError
from autoprune.evaluation import perplexity
from autoprune.structured.apply import ShrinkReport, shrink_model
from autoprune.structured.importance import Importance
from autoprune.structured.journal import Journal, Timing
from autoprune.structured.layout import Layout, Plan, discover
from autoprune.structured.speed import Probe, decode_speedup
from autoprune.structured.surgery import apply_config, config_changes, drop_blocks, remove_channels, remove_kv_groups

# cheap (a plan in seconds), and at the context length of the reported decode (128-token prompts)
SEARCH_PROBE = Probe(batch=1, prompt=128, new_tokens=16, repeats=3, min_seconds=1.0)
CONFIRMATIONS = 2  # fresh measurements that confirm a chosen plan's speed-up


@dataclass(frozen=True)
class Candidate:
    family: str  # depth, width, width+heads, mixed
    plan: Plan
    speedup: float  # measured decode speed-up over the dense model (batch 1)


def cut(model: nn.Module, layout: Layout, plan: Plan) -> nn.Module:
    """A copy of ``model`` with the plan's shapes (the last blocks, the first heads and channels
    kept, nothing calibrated): as fast as the calibrated plan, not as good."""
    m = copy.deepcopy(model)
    kept = list(range(layout.blocks - plan.blocks))
    changes = config_changes(m, layout, plan, kept)
    drop_blocks(m, layout, list(range(len(kept), layout.blocks)))
    for block in m.get_submodule(layout.path):
        if plan.kv_groups:
            remove_kv_groups(block.get_submodule(layout.attention), layout,
                             torch.arange(layout.kv_heads - plan.kv_groups))
        if plan.channels:
            remove_channels(block.get_submodule(layout.mlp), torch.arange(layout.channels - plan.channels))
    apply_config(m, changes)
    return m


def frontier(path: list[Plan], speedup: Callable[[Plan], float], target: float,
             confirm: Callable[[Plan], float] | None = None) -> tuple[Plan, float] | None:
    """The first plan of ``path`` (ordered by removal) whose speed-up reaches ``target``, by
    bisection, and its speed-up; None when its last plan falls short. With ``confirm`` (fresh
    measurements), a plan a noisy measurement let through must reach the target on them, or the
    next plan is tried; the speed-up returned is then the confirmed one."""
    if speedup(path[-1]) < target:
        return None
    lo, hi = -1, len(path) - 1  # path[hi] reaches the target
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if speedup(path[mid]) >= target:
            hi = mid
        else:
            lo = mid
    if confirm is None:
        return path[hi], speedup(path[hi])
    while (up := confirm(path[hi])) < target:
        if hi == len(path) - 1:
            return None
        hi += 1
    return path[hi], up


class Planner:
    """Measured speed-ups of plans of one model (cached), and each family's plan for a target."""

    def __init__(self, model: nn.Module, probe: Probe = SEARCH_PROBE, align: int | None = None,
                 journal: Journal | None = None):
        """``journal``: timings recorded by an interrupted search, handed back before timing anew,
        and the record of new ones."""
        self.model, self.probe, self.journal = model, probe, journal
        self.layout = discover(model)
        self.measured: dict[Plan, list[float]] = {}  # plan shape -> speed-ups measured
        self.rates: dict[Plan, list[tuple[float, float]]] = {}  # plan shape -> (dense, shrunk) decode tokens/s
        self.confirmations: dict[Plan, list[float]] = {}  # plan shape -> the speed-ups ``confirm`` measured
        c = self.layout.channels
        self.align = align or (32 if c >= 512 else 4)
        self.channel_removals = [c - k for k in range((c - 1) // self.align * self.align, 0, -self.align)]

    def speedup(self, plan: Plan) -> float:
        """The mean of the measurements of the plan's shape (one, taken now, if there are none yet);
        which blocks a plan drops does not change its speed."""
        if plan.shape not in self.measured:
            self._measure(plan)
        return statistics.mean(self.measured[plan.shape])

    def confirm(self, plan: Plan) -> float:
        """``CONFIRMATIONS`` fresh measurements of ``plan``'s shape, to judge a plan that earlier
        measurements chose: the mean of every confirming measurement of the shape so far (a plan
        confirmed twice, as a family's plan and as a finalist, is judged on both)."""
        fresh = [self._measure(plan) for _ in range(CONFIRMATIONS)]
        self.confirmations.setdefault(plan.shape, []).extend(fresh)
        return statistics.mean(self.confirmations[plan.shape])

    def _measure(self, plan: Plan) -> float:
        recorded = self.journal.next_timing(plan.shape) if self.journal is not None else None
        if recorded is not None:
            s, dense, shrunk = recorded.speedup, recorded.dense, recorded.shrunk
        else:
            s, dense, shrunk = decode_speedup(self.model, cut(self.model, self.layout, plan.shape), self.probe)
            if self.journal is not None:
                self.journal.timed(Timing(plan.shape, s, dense, shrunk))
        self.measured.setdefault(plan.shape, []).append(s)
        self.rates.setdefault(plan.shape, []).append((dense, shrunk))
        return s

    def tokens_per_second(self, plan: Plan) -> tuple[float, float]:
        """(dense, shrunk) decode tokens/s of the plan's shape, means of its measurements (batch 1)."""
        self.speedup(plan)
        rates = self.rates[plan.shape]
        return statistics.mean(r[0] for r in rates), statistics.mean(r[1] for r in rates)

    def _channels(self, blocks: int, kv_groups: int) -> list[Plan]:
        return [Plan(blocks, kv_groups, r) for r in [0, *self.channel_removals]]

    def widest(self) -> Plan:
        """The plan that removes the most: every block but one, the most KV groups and channels."""
        lay = self.layout
        kv = lay.valid_kv_removals()[-1] if lay.attention is not None else 0
        return Plan(lay.blocks - 1, kv, self.channel_removals[-1] if self.channel_removals and lay.mlp else 0)

    def check_reachable(self, target: float) -> None:
        """``UserError`` (one line) when even the widest plan measures short of ``target``."""
        widest = self.widest()
        if self.speedup(widest) < target:
            raise UserError(f"a decode speed-up of {target:g}x is out of reach on this machine: the most any plan "
                            f"removes ({widest.describe(self.layout)}) measures {self.speedup(widest):.2f}x")

    def candidates(self, target: float) -> list[Candidate]:
        """The least-removal plan of each family that reaches ``target``; ``UserError`` when none does."""
        lay = self.layout
        kv = lay.valid_kv_removals()[1:]
        widest = self.widest()
        self.check_reachable(target)
        paths = {"depth": [Plan(n) for n in range(1, lay.blocks)]}
        if self.channel_removals:
            paths["width"] = self._channels(0, 0)[1:]
        if kv and self.channel_removals:
            paths["width+heads"] = self._channels(0, kv[0])
        out = []
        for family, path in paths.items():
            found = frontier(path, self.speedup, target, self.confirm)
            if found is not None:
                out.append(Candidate(family, *found))
        if self.channel_removals:
            depth = next((c.plan.blocks for c in out if c.family == "depth"), lay.blocks - 1)
            found = frontier(self._channels(max(1, depth // 2), 0), self.speedup, target, self.confirm)
            if found is not None and found[0].channels:
                out.append(Candidate("mixed", *found))
        if not out:
            raise UserError(f"no depth, width or mixed plan reaches a decode speed-up of {target:g}x on this machine "
                            f"(only removing all of {widest.describe(lay)} does)")
        return out


@dataclass(frozen=True)
class Selected:
    candidate: Candidate
    loss: float  # perplexity on the selection windows
    report: ShrinkReport


def select_plan(dense: nn.Module, candidates: list[Candidate], calib: Tensor, select: Tensor,
                importance: Importance, reconstruct: bool, damp: float, batch_size: int = 8,
                influence: list[float] | None = None, progress: bool = False,
                ) -> tuple[nn.Module, list[Selected]]:
    """Shrink a copy of ``dense`` by each candidate; the one with the lowest perplexity on
    ``select`` (never on evaluation data), and every candidate's score, in order."""
    best, scored = None, []
    for cand in candidates:
        model = copy.deepcopy(dense)
        report = shrink_model(model, cand.plan, calib, importance, reconstruct, damp, batch_size, progress, influence)
        loss = perplexity(model, select, batch_size).perplexity
        scored.append(Selected(cand, loss, report))
        if best is None or loss < best[0]:
            best = (loss, model)
        del model
    return best[1], scored
