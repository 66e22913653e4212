"""One structured search from start to finalists, and its files: what ``autoprune shrink --search`` runs.

Dense statistics once (``proxy.OneShot``), the space from the Planner's widths and Block
Influence order, the families' least-removal plans (``Planner.candidates``: the known recipes,
uniform width and ShortGPT's blocks among them) as the first trials, under a target the latency
model that fits each plan's channels to the speed boundary (``latency``, fitted on the families'
timings too), the strategy's trials (``search.run_trials``), the finalists timed again and the
families beside them. The caller shrinks the finalists for real (``speedup.select_plan``) and
chooses.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn
from tqdm.auto import tqdm

from autoprune.errors import UserError
from autoprune.structured.journal import Journal
from autoprune.structured.latency import LatencyModel
from autoprune.structured.layout import Layout
from autoprune.structured.proxy import OneShot
from autoprune.structured.search import Trial, finalists, pareto_front, run_trials
from autoprune.structured.space import Space
from autoprune.structured.speedup import Candidate, Planner
from autoprune.structured.strategies import make_strategy

MARGIN = 0.02  # plans are fitted to a predicted speed-up this much above the target (measurements are noisy)


@dataclass(frozen=True)
class SearchSettings:
    strategy: str  # tpe, nsga2, evo
    target: float  # measured decode speed-up a plan must reach
    trials: int
    pareto: bool = False  # map the whole front (every plan scored) rather than only feasible plans
    finalists: int = 3
    seed: int = 0
    importance: str = "activation"  # the proxy's: activation or obs (any other scores as activation)
    reconstruct: bool = True
    damp: float = 0.01
    batch_size: int = 8


@dataclass(frozen=True)
class Searched:
    candidates: tuple[Candidate, ...]  # the finalists, best proxy first, speed-ups confirmed, then the seeds
    seeds: tuple[Candidate, ...]  # the families' plans the search started from
    trials: tuple[Trial, ...]
    front: tuple[Trial, ...]
    influence: tuple[float, ...]  # the dense model's Block Influence on the calibration windows
    space: Space


def search_plans(model: nn.Module, planner: Planner, calib: Tensor, proxy: Tensor, s: SearchSettings,
                 on_trial: Callable[[Trial], None] | None = None, progress: bool = False,
                 oneshot: OneShot | None = None, journal: Journal | None = None) -> Searched:
    """Trials of ``s.strategy`` on ``model`` (timed by ``planner``, scored on ``proxy``) and their finalists;
    ``UserError`` when no trial reaches the target. ``oneshot``: the proxy, when already built;
    ``journal``: proxy scores recorded by an interrupted search (the planner holds its timings)."""
    oneshot = oneshot or OneShot(model, calib, proxy, s.importance, s.reconstruct, s.damp, s.batch_size)
    loss = oneshot.loss if journal is None else (lambda plan: journal.score(plan, oneshot.loss))
    space = Space.of(planner.layout, planner.channel_removals, oneshot.block_order())
    seeds = [Candidate(c.family, space.plan(c.plan.blocks, c.plan.kv_groups, c.plan.channels), c.speedup)
             for c in families(planner, s.target)]
    max_blocks, channels_for = None, None
    if not s.pareto:  # plans on the speed boundary (see latency): channels fitted, no more blocks than needed
        latency = LatencyModel(model, planner.layout)
        latency.fit(planner.measured)
        lay = planner.layout
        max_blocks = min(space.max_blocks, latency.depth_for(s.target) + max(2, lay.blocks // 10))

        def channels_for(blocks: int, kv_groups: int) -> int:
            latency.fit(planner.measured)
            return latency.least_channels(blocks, kv_groups, space.channels, s.target * (1 + MARGIN))

    strategy = make_strategy(s.strategy, space, s.target, s.pareto, s.trials, s.seed, max_blocks, channels_for)
    bar = tqdm(total=s.trials, desc=f"search ({s.strategy})", disable=not progress, leave=False)

    def seen(trial: Trial) -> None:
        bar.update(1)
        if on_trial is not None:
            on_trial(trial)

    try:
        trials = run_trials(strategy, lambda p: (planner.speedup(p), planner.tokens_per_second(p)[1]), loss,
                            s.target, s.trials, score_all=s.pareto, on_trial=seen, seeds=seeds)
    finally:
        bar.close()
    cands = finalists(trials, s.finalists, s.target, planner.confirm, s.strategy, s.pareto, seeds)
    if not cands:
        best = max(t.speedup for t in trials)
        raise UserError(f"none of the {len(trials)} {s.strategy} trials reached a measured decode speed-up of "
                        f"{s.target:g}x (the fastest measured {best:.2f}x): raise --trials or lower --speedup")
    return Searched(tuple(cands), tuple(seeds), tuple(trials), tuple(pareto_front(trials)), tuple(oneshot.influence),
                    space)


def families(planner: Planner, target: float) -> list[Candidate]:
    """Each family's least-removal plan reaching ``target`` (none when no family reaches it: a
    search may still find a plan that does)."""
    try:
        return planner.candidates(target)
    except UserError:
        return []


def write_trials(path: Path, trials: list[Trial], layout: Layout) -> Path:
    """The trials as CSV, one row each (``Trial.row``)."""
    rows = [t.row(layout) for t in trials]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial"])
        w.writeheader()
        w.writerows(rows)
    return path
