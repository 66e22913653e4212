"""Strategies over the structured space, driven by ask/tell: ``ask()`` a plan, ``tell(trial)`` its result.

    tpe     Optuna's TPE (multivariate), one objective, the proxy loss, under the constraint that
            the measured speed-up reaches the target (``Trial.set_constraint``: infeasible
            trials rank below every feasible one, by how far they fall short); with ``pareto``,
            two objectives, loss down and speed-up up (MOTPE), no constraint.
    nsga2   Optuna's NSGA-II, the same objectives and constraint.
    evo     a small (mu + 1) evolution over plans: a parent by binary tournament under Deb's rules
            (feasible before infeasible, then by loss; infeasible by their shortfall), one or two
            moves (``Space.mutate``); the best ``population`` trials survive. Swaps keep the shape,
            so a child often costs no speed measurement. Single objective only.

Every strategy starts from Block Influence order (ShortGPT's blocks), so that what it finds is
measured against it; the search does not run the families' bisections.
"""

from __future__ import annotations

import math
import random
from typing import Protocol

from autoprune.errors import UserError
from autoprune.structured.layout import Plan
from autoprune.structured.space import Space

STRATEGIES = ("tpe", "nsga2", "evo")
PENALTY = 1e9  # the loss told for an infeasible trial no proxy scored (constraints rank those trials)


class Strategy(Protocol):
    def ask(self) -> Plan: ...

    def tell(self, plan: Plan, speedup: float, loss: float | None) -> None: ...


class OptunaStrategy:
    """TPE or NSGA-II through an in-memory Optuna study."""

    def __init__(self, space: Space, sampler: str, target: float, pareto: bool, trials: int, seed: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.space, self.target, self.pareto = space, target, pareto
        if sampler == "tpe":
            smp = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=max(2, min(10, trials // 4)))
        else:
            smp = optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(16, trials // 4)))
        self.study = optuna.create_study(directions=["minimize", "maximize"] if pareto else ["minimize"], sampler=smp)
        if space.max_blocks:
            self.study.enqueue_trial({f"p{b}": p for b, p in enumerate(space.bi_priority())}, skip_if_exists=True)
        self._open: dict[Plan, list] = {}

    def ask(self) -> Plan:
        t = self.study.ask()
        s = self.space
        blocks = t.suggest_int("blocks", 0, s.max_blocks)
        kv = t.suggest_int("kv", 0, len(s.kv) - 1)
        ch = t.suggest_int("channels", 0, len(s.channels) - 1)
        prio = [t.suggest_float(f"p{b}", 0.0, 1.0) for b in range(s.layout.blocks)] if s.max_blocks else None
        plan = s.decode(blocks, kv, ch, prio)
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

    def __init__(self, space: Space, target: float, seed: int, population: int = 8):
        self.space, self.target, self.population = space, target, population
        self.rng = random.Random(seed)
        self.pool: list[tuple[Plan, float, float]] = []  # (plan, speed-up, loss) survivors
        self.seen: set[Plan] = set()
        self.asked = 0

    def _key(self, item: tuple[Plan, float, float]) -> tuple:
        _, speedup, loss = item
        return (0, loss) if speedup >= self.target else (1, self.target - speedup)

    def ask(self) -> Plan:
        self.asked += 1
        for _ in range(20):  # a new plan if one is found quickly
            if self.asked <= self.population or not self.pool:
                plan = self.space.random(self.rng)
            else:
                a, b = self.rng.sample(self.pool, 2) if len(self.pool) > 1 else (self.pool[0],) * 2
                plan = self.space.mutate(min(a, b, key=self._key)[0], self.rng)
            if plan not in self.seen:
                break
        self.seen.add(plan)
        return plan

    def tell(self, plan: Plan, speedup: float, loss: float | None) -> None:
        self.pool.append((plan, speedup, PENALTY if loss is None else loss))
        self.pool = sorted(self.pool, key=self._key)[:self.population]


def make_strategy(name: str, space: Space, target: float, pareto: bool, trials: int, seed: int) -> Strategy:
    if name == "evo":
        if pareto:
            raise UserError("--pareto searches with tpe or nsga2, not evo")
        return Evolution(space, target, seed, population=max(4, min(8, trials // 4)))
    if name in ("tpe", "nsga2"):
        return OptunaStrategy(space, name, target, pareto, trials, seed)
    raise UserError(f"unknown structured search {name!r} (choose {', '.join(STRATEGIES)} or families)")
