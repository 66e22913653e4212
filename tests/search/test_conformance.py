"""The conformance suite every registered strategy passes (``search.registry``), on the real
stories260K proxy. A strategy that runs in both phases is a case per phase. Properties:

target      every candidate keeps the target; applied by the proxy, an explicit allocation prunes
            exactly round(S N) weights, a uniform or OWL one S N up to the engine's rounding of
            each linear (half a weight per linear); under 2:4 exactly half the weights, or the
            strategy is done at once without proposing (an N:M pattern fixes every ratio)
failed      failed results are accepted: the strategy goes on proposing, and none is its best
resume      the state, mid-search with candidates in flight, survives strict JSON; a new strategy
            loaded from it, told the in-flight results (the driver runs again what it had asked),
            proposes exactly what an uninterrupted one does (RL: its agent replays the record)
limit       with its space's limit the strategy is done within a bounded number of candidates and
            then proposes nothing; with the packaged space (no limit) it keeps proposing, so the
            scheduler's deadline is what stops it (it stops asking)

``benchmarks/conformance_table.py`` runs this file and prints the strategy x property table.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import pytest

from autoprune.messages import ProxyResult
from autoprune.pruning.policy import Policy
from autoprune.search import spec
from autoprune.search.allocation_space import allocation_sparsity
from autoprune.search.base import Candidate, SearchContext, Strategy
from autoprune.search.registry import REGISTRY, strategy_class

# small spaces, each with its limit (a strategy not listed runs its packaged space: add it here)
SMALL = {
    "gp": {"population": 6, "generations": 2, "max_height": 3, "sequential_share": 1.0},
    "bo": {"n_trials": 5, "n_startup_trials": 2, "fidelities": [1, None]},
    "rl": {"episodes": 8, "agent": {"n_steps": 10, "batch_size": 10, "n_epochs": 2}},  # learns every 2 episodes
    "evo": {"offspring": 4, "fidelities": [1, None], "survivors": [2], "generations": 2},
    "random": {"draws": 8},
}
# the packaged limits, for the "no limit" half of the limit property: every one is null
LIMITS = {"gp": "generations", "bo": "n_trials", "rl": "episodes", "evo": "generations", "random": "draws"}
CASES = [(name, phase) for name, (_, where) in REGISTRY.items()
         for phase in (("metric", "allocation") if where == "both" else (where,))]
IDS = [name if REGISTRY[name][1] != "both" else f"{name}/{phase}" for name, phase in CASES]
TARGET = 0.6
BOUND = 200  # candidates within which a limited small space must be done
RESUME_AT = (5, 12)  # stop after 5 candidates told and 2 more asked; 12 in all


@pytest.fixture(scope="module")
def world(stories, calib):
    """The proxy evaluator (G and the Hessians for GP's terminals), the per-linear weight counts,
    and a block-damage oracle for RL's per-step rewards."""
    from autoprune.evaluation.block_damage import BlockDamage
    from autoprune.evaluation.proxy import ProxyEvaluator
    from autoprune.evaluation.ratio_proxy import RatioProxy
    from autoprune.models import decoder_blocks, prunable_linears
    from autoprune.pruning.engine import collect_stats

    model = copy.deepcopy(stories.model)
    stats = collect_stats(model, calib[:4], gradients=True, progress=False)
    evaluator = ProxyEvaluator(model, stats, calib[8:12], "kl", batch_size=2, calib_windows=calib[:4])
    _, blocks = decoder_blocks(model)
    sizes = tuple({n: lin.weight.numel() for n, lin in prunable_linears(b).items()} for b in blocks)
    damage = BlockDamage(RatioProxy(evaluator, Policy(metric="wanda", sparsity=TARGET)), calib[:4])
    return evaluator, sizes, damage


def build(world, case, tmp_path, space: dict | None = None, pattern: str = "unstructured") -> Strategy:
    name, phase = case
    evaluator, sizes, damage = world
    base = Policy(metric="wanda", sparsity=TARGET) if pattern == "unstructured" else Policy(metric="wanda", pattern=pattern)
    ctx = SearchContext(base, sizes, evaluator.max_batches, 0, tmp_path, damage=damage)
    given = {**spec.resolve().get(name, {}), **(SMALL.get(name, {}) if space is None else space)}
    if REGISTRY[name][1] == "both":
        given["phase"] = phase
    return strategy_class(name)(ctx, given)


def evaluate(world, cands: list[Candidate]) -> list[ProxyResult]:
    return [world[0].evaluate(c.policy, c.batches, c.sequential) for c in cands]


def drive(strategy: Strategy, answer, n: int, batch: int = 2) -> list[tuple[Candidate, ProxyResult]]:
    """Ask and tell until done, nothing is proposed, or ``n`` candidates; every pair, in order."""
    out = []
    while len(out) < n and not strategy.done():
        cands = strategy.ask(min(batch, n - len(out)))
        if not cands:
            break
        for c, r in zip(cands, answer(cands)):
            strategy.tell(c, r)
            out.append((c, r))
    return out


def proposal(c: Candidate) -> tuple:
    return json.dumps(c.policy.to_dict(), sort_keys=True), c.batches, c.sequential


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_target(world, case, tmp_path, record_property):
    _, sizes, _ = world
    total = sum(sum(b.values()) for b in sizes)
    linears = sum(len(b) for b in sizes)
    pairs = drive(build(world, case, tmp_path / "u"), lambda cs: evaluate(world, cs), 10)
    assert pairs
    for c, r in pairs:
        p = c.policy
        assert (p.sparsity, p.pattern) == (TARGET, "unstructured") and r.ok, (p, r)
        pruned = round(r.sparsity * total)
        if p.allocation == "explicit":
            assert round(allocation_sparsity(p, sizes) * total) == round(TARGET * total)  # asked for exactly
            assert pruned == round(TARGET * total)  # and got exactly
        else:
            assert abs(pruned - TARGET * total) <= linears / 2
    nm = build(world, case, tmp_path / "nm", pattern="2:4")
    pairs = drive(nm, lambda cs: evaluate(world, cs), 6)
    if not pairs:
        assert nm.done()  # no search under N:M: done at once
        record_property("note", "2:4: done at once")
    for c, r in pairs:
        assert c.policy.pattern == "2:4" and r.ok and round(r.sparsity * total) == total // 2, (c.policy, r)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_failed(world, case, tmp_path):
    strategy = build(world, case, tmp_path)
    failed = []

    def answer(cands):  # the first three candidates fail, as a worker that died would report
        out = []
        for c, r in zip(cands, evaluate(world, cands)):
            out.append(ProxyResult.failed("worker died") if len(failed) < 3 else r)
            if len(failed) < 3:
                failed.append(c)
        return out

    pairs = drive(strategy, answer, 12, batch=1)
    assert len(failed) == 3 and len(pairs) > 3  # it went on proposing after the failures
    best = strategy.best()
    if best is not None:
        assert math.isfinite(best[1]) and best[1] in {r.loss for _, r in pairs if r.ok}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_resume(world, case, tmp_path):
    name = case[0]
    # no limit but RL's (its agent stops stepping at the limit: no thread left running)
    space = {k: v for k, v in SMALL.get(name, {}).items() if k != LIMITS.get(name)}
    space.update({"episodes": RESUME_AT[1]} if name == "rl" else {})
    answer = lambda cs: evaluate(world, cs)  # noqa: E731

    def session(folder: str, stop: bool) -> list[tuple]:
        """The same driving either way: one at a time, two in flight at the stop, then the rest."""
        strategy = build(world, case, tmp_path / folder, space)
        before = drive(strategy, answer, RESUME_AT[0], batch=1)
        open_ = strategy.ask(2)
        assert open_
        if stop:
            state = json.loads(json.dumps(strategy.state_dict(), allow_nan=False))
            strategy = build(world, case, tmp_path / folder, space)  # the same run folder: BO's study is there
            strategy.load_state_dict(state)
        for c, r in zip(open_, answer(open_)):
            strategy.tell(c, r)
        after = drive(strategy, answer, RESUME_AT[1] - len(before) - len(open_), batch=1)
        assert after  # it went on past the stop
        if name == "rl":
            assert strategy.diverged == 0
        return [proposal(c) for c, _ in before] + [proposal(c) for c in open_] + [proposal(c) for c, _ in after]

    assert session("resumed", stop=True) == session("whole", stop=False)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_limit(world, case, tmp_path):
    name = case[0]
    limited = build(world, case, tmp_path / "limited")
    pairs = drive(limited, lambda cs: evaluate(world, cs), BOUND, batch=4)
    assert limited.done() and len(pairs) < BOUND and limited.ask(4) == []
    packaged = spec.resolve().get(name, {})
    assert packaged.get(LIMITS[name], "absent") is None  # the packaged space sets no limit: the deadline stops it
    if case == ("random", "metric"):
        return  # the metric grid is finite: done when it is exhausted (above), whatever the limit
    unlimited = build(world, case, tmp_path / "unlimited", space={k: v for k, v in SMALL[name].items()
                                                                   if k != LIMITS[name]})
    assert len(drive(unlimited, lambda cs: evaluate(world, cs), len(pairs) + 4, batch=4)) == len(pairs) + 4
    assert not unlimited.done() and unlimited.ask(1)  # (RL: its agent now waits, stepping no more)
