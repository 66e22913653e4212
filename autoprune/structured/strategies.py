"""Strategies over the structured space, driven by ask/tell: ``ask()`` a plan, ``tell(...)`` its result.

    tpe     Optuna's TPE (multivariate) over the depth (a count of blocks, Block Influence order)
            and the KV groups; one objective, the proxy loss, under the constraint that the
            measured speed-up reaches the target (``Trial.set_constraint``: infeasible trials
            rank below every feasible one, by how far they fall short). With ``pareto``: two
            objectives, loss down and speed-up up (MOTPE), the channels searched too, no constraint.
    nsga2   Optuna's NSGA-II, the same.
    evo     a small (mu + 1) evolution over plans, the set of dropped blocks itself searched: a
            parent by binary tournament under Deb's rules (feasible before infeasible, then by
            loss; infeasible by their shortfall), one or two moves (``Space.mutate``); the best
            ``population`` trials survive. Swaps keep the shape, so such a child costs no timing.
            Single objective only.

Under a target the MLP channels are fitted to the depth and heads (``channels_for``, see
``latency``) rather than searched. ``enqueue(plan)`` makes a known plan the next one asked (the
families' plans start every search: Optuna's ``enqueue_trial``, evolution's first parents).
"""

from __future__ import annotations

import math
import random
from typing import Protocol

from autoprune.errors import UserError
from autoprune.structured.layout import Plan
from autoprune.structured.space import Fit, Space

STRATEGIES = ("tpe", "nsga2", "evo")
PENALTY = 1e9  # the loss told for an infeasible trial no proxy scored (constraints rank those trials)


class Strategy(Protocol):
    def ask(self) -> Plan: ...

    def tell(self, plan: Plan, speedup: float, loss: float | None) -> None: ...

    def enqueue(self, plan: Plan) -> None:
        """Ask ``plan`` before any plan of the strategy's own (first in, first out)."""


class OptunaStrategy:
    """TPE or NSGA-II through an in-memory Optuna study: a count of blocks (Block Influence order),
    KV groups and, unless ``channels_for`` fits them, MLP channels."""

    def __init__(self, space: Space, sampler: str, target: float, pareto: bool, trials: int, seed: int,
                 max_blocks: int | None = None, channels_for: Fit | None = None):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space, self.target, self.pareto, self.channels_for = space, target, pareto, channels_for
        self.max_blocks = space.max_blocks if max_blocks is None else max_blocks
        if sampler == "tpe":
            smp = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=max(2, min(10, trials // 4)))
        else:
            smp = optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(16, trials // 4)))
        self.study = optuna.create_study(directions=["minimize", "maximize"] if pareto else ["minimize"], sampler=smp)
        self._open: dict[Plan, list] = {}
        self._queue: list[Plan] = []

    def enqueue(self, plan: Plan) -> None:
        """The plan's numbers become the trial's fixed parameters (``plan.drop`` and, under a target,
        ``plan.channels`` as given)."""
        s = self.space
        self.max_blocks = max(self.max_blocks, plan.blocks)
        params = {"blocks": plan.blocks, "kv": s.kv.index(plan.kv_groups)}
        if self.channels_for is None:
            params["channels"] = s.channels.index(plan.channels)
        self.study.enqueue_trial(params, skip_if_exists=False)
        self._queue.append(plan)

    def ask(self) -> Plan:
        t = self.study.ask()
        s = self.space
        blocks = t.suggest_int("blocks", 0, self.max_blocks)
        kv = t.suggest_int("kv", 0, len(s.kv) - 1)
        channels = None if self.channels_for is not None else t.suggest_int("channels", 0, len(s.channels) - 1)
        if self._queue:
            plan = self._queue.pop(0)
        elif channels is None:
            plan = s.plan(blocks, s.kv[kv], self.channels_for(blocks, s.kv[kv]))
        else:
            plan = s.decode(blocks, kv, channels)
        self._open.setdefault(plan, []).append(t)
        return plan

    def tell(self, plan: Plan, speedup: float, loss: float | None) -> None:
        t = self._open[plan].pop(0)
        value = PENALTY if loss is None or not math.isfinite(loss) else loss
        if self.pareto:
            self.study.tell(t, [value, speedup])
        else:
            t.set_constraint("speedup", self.target - speedup)  # feasible at 0 or less
            self.study.tell(t, value)


class Evolution:
    """(mu + 1) evolution with Deb's constraint rules; ``population`` random shapes (blocks in Block
    Influence order) first."""

    def __init__(self, space: Space, target: float, seed: int, population: int = 8, max_blocks: int | None = None,
                 channels_for: Fit | None = None):
        self.space, self.target, self.population = space, target, population
        self.max_blocks, self.channels_for = max_blocks, channels_for
        self.rng = random.Random(seed)
        self.pool: list[tuple[Plan, float, float]] = []  # (plan, speed-up, loss) survivors
        self.seen: set[Plan] = set()
        self.asked = 0
        self._queue: list[Plan] = []

    def enqueue(self, plan: Plan) -> None:
        self._queue.append(plan)

    def _key(self, item: tuple[Plan, float, float]) -> tuple:
        _, speedup, loss = item
        return (0, loss) if speedup >= self.target else (1, self.target - speedup)

    def ask(self) -> Plan:
        self.asked += 1
        if self._queue:
            plan = self._queue.pop(0)
            self.seen.add(plan)
            return plan
        for _ in range(20):  # a new plan if one is found quickly
            if self.asked <= self.population or not self.pool:
                plan = self.space.random(self.rng, self.max_blocks, self.channels_for)
            else:
                a, b = self.rng.sample(self.pool, 2) if len(self.pool) > 1 else (self.pool[0],) * 2
                plan = self.space.mutate(min(a, b, key=self._key)[0], self.rng, self.max_blocks, self.channels_for)
            if plan not in self.seen:
                break
        self.seen.add(plan)
        return plan

    def tell(self, plan: Plan, speedup: float, loss: float | None) -> None:
        self.pool.append((plan, speedup, PENALTY if loss is None else loss))
        self.pool = sorted(self.pool, key=self._key)[:self.population]


def make_strategy(name: str, space: Space, target: float, pareto: bool, trials: int, seed: int,
                  max_blocks: int | None = None, channels_for: Fit | None = None) -> Strategy:
    """``max_blocks``: the most blocks a plan drops (default: all but one); ``channels_for``: the
    channels of a depth and head count (default: searched)."""
    if name == "evo":
        if pareto:
            raise UserError("--pareto searches with tpe or nsga2, not evo")
        return Evolution(space, target, seed, max(4, min(8, trials // 4)), max_blocks, channels_for)
    if name in ("tpe", "nsga2"):
        return OptunaStrategy(space, name, target, pareto, trials, seed, max_blocks, channels_for)
    raise UserError(f"unknown structured search {name!r} (choose {', '.join(STRATEGIES)} or families)")
