"""The structured search: trials of plans, each timed and scored, the Pareto front, and the finalists.

The first trials are the known recipes' plans (``seeds``: each family's least-removal plan, see
``speedup.Planner.candidates``), enqueued in the strategy, which then asks its own. A trial asks
its strategy for a plan, measures the decode speed-up of the plan's shape (on a copy
cut to it, ``Planner``: cached per shape, so a plan that only moves blocks costs no timing) and,
when it is feasible (speed-up at least the target) or the search maps the whole front, scores it
by the proxy (``proxy.OneShot``: perplexity of a one-shot shrunk copy on a few proxy windows).
An infeasible trial is told to its strategy without a loss, and costs only its timing.

The finalists are the best few distinct feasible plans by proxy (with ``pareto``, taken from the
front), timed again: a plan whose fresh measurements fall short is passed over, as
``speedup.frontier`` confirms its plans; the seeds join them, so that the search never hands back
a plan worse on the selection windows than a known recipe. ``speedup.select_plan`` then shrinks
them for real and keeps the one with the lowest perplexity on the selection windows (never the
evaluation data).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autoprune.structured.layout import Plan
from autoprune.structured.speedup import Candidate
from autoprune.structured.strategies import Strategy


@dataclass(frozen=True)
class Trial:
    number: int
    plan: Plan
    speedup: float  # measured decode speed-up of the plan's shape (batch 1), mean of its measurements then
    tokens_per_s: float  # measured decode tokens/s of the shape (batch 1)
    loss: float | None  # proxy perplexity; None: infeasible and not scored
    feasible: bool  # speed-up at least the target
    seconds: float
    origin: str = ""  # the family of a seeded trial (depth, width, width+heads, mixed); "" for the strategy's own

    def row(self, layout) -> dict:
        """A flat record (CSV, MLflow)."""
        p = self.plan
        return {"trial": self.number, "blocks": p.blocks, "kv_groups": p.kv_groups, "channels": p.channels,
                "dropped": " ".join(map(str, p.drop)), "plan": p.describe(layout), "speedup": round(self.speedup, 4),
                "tokens_per_s": round(self.tokens_per_s, 2), "proxy_ppl": "" if self.loss is None else self.loss,
                "feasible": self.feasible, "seconds": round(self.seconds, 2), "seed": self.origin}


def run_trials(strategy: Strategy, speed: Callable[[Plan], tuple[float, float]], loss: Callable[[Plan], float],
               target: float, trials: int, score_all: bool = False,
               on_trial: Callable[[Trial], None] | None = None, seeds: Sequence[Candidate] = ()) -> list[Trial]:
    """``trials`` trials, the first the ``seeds``' plans; ``speed(plan)``: (speed-up, tokens/s);
    ``loss(plan)``: the proxy; ``score_all``: score infeasible plans too (a Pareto front);
    ``on_trial`` sees each trial."""
    out: list[Trial] = []
    scored: dict[Plan, float] = {}
    for seed in seeds[:trials]:
        strategy.enqueue(seed.plan)
    for number in range(trials):
        t0 = time.perf_counter()
        plan = strategy.ask()
        up, rate = speed(plan)
        feasible = up >= target
        value = None
        if feasible or score_all:
            value = scored[plan] if plan in scored else loss(plan)
            scored[plan] = value
        strategy.tell(plan, up, value)
        origin = seeds[number].family if number < len(seeds) else ""
        trial = Trial(number, plan, up, rate, value, feasible, time.perf_counter() - t0, origin)
        out.append(trial)
        if on_trial is not None:
            on_trial(trial)
    return out


def pareto_front(trials: list[Trial]) -> list[Trial]:
    """The scored trials no other scored trial beats on both proxy loss (lower) and speed-up
    (higher), one per plan, by speed-up."""
    pts = {}
    for t in trials:
        if t.loss is not None and math.isfinite(t.loss):
            pts.setdefault(t.plan, t)
    pts = list(pts.values())
    front = [t for t in pts if not any(o.loss <= t.loss and o.speedup >= t.speedup
                                       and (o.loss < t.loss or o.speedup > t.speedup) for o in pts)]
    return sorted(front, key=lambda t: t.speedup)


def finalists(trials: list[Trial], k: int, target: float, confirm: Callable[[Plan], float],
              label: str, pareto: bool = False, seeds: Sequence[Candidate] = ()) -> list[Candidate]:
    """The ``k`` best distinct feasible plans by proxy (from the front with ``pareto``) whose
    speed-up, measured again (``confirm``: fresh measurements, not those that chose the plan),
    still reaches ``target``, as ``Candidate``s of family ``label`` (a seed's plan keeps its family); then the
    ``seeds`` tried and not among them (their speed-ups confirmed when they were found), unless
    timed again here and short."""
    pool = pareto_front(trials) if pareto else trials
    ranked, seen = [], set()
    for t in sorted((t for t in pool if t.feasible and t.loss is not None), key=lambda t: t.loss):
        if t.plan not in seen:
            seen.add(t.plan)
            ranked.append(t)
    out, confirmed = [], {}
    for t in ranked:
        if t.plan.shape not in confirmed:  # plans of one shape share their timing
            confirmed[t.plan.shape] = confirm(t.plan)
        up = confirmed[t.plan.shape]
        if up >= target:
            out.append(Candidate(t.origin or label, t.plan, up))
        if len(out) == k:
            break
    chosen, tried = {c.plan for c in out}, {t.plan for t in trials}
    return out + [c for c in seeds if c.plan in tried and c.plan not in chosen
                  and confirmed.get(c.plan.shape, target) >= target]
