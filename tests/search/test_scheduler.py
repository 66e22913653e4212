"""The scheduler and the runner on a fake clock, without Ray or a model: the budget split, the
deadline (no job starts that would end past it), a strategy that converges early, resume by replay.

The executor here is the test's model side: it scores a policy by a fixed function of its block
ratios and metric, and a job takes ``JOB_SECONDS`` of the fake clock.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from autoprune.messages import ProxyJob, ProxyResult, ValidationJob, ValidationResult
from autoprune.pruning.policy import Policy
from autoprune.search.base import Candidate, Strategy
from autoprune.search.budget import Budget, PhaseSplit
from autoprune.search.events import PhaseEnded, PhaseStarted, Scored, Submitted
from autoprune.search.executor import Executor
from autoprune.search.journal import Journal
from autoprune.search.runner import SearchRunner, SearchSettings
from autoprune.search.scheduler import (MAX_VALIDATION, NM_ALLOCATION, Answer, Run, Scheduler, Submit,
                                        ValidationPlan, extend_metric, plan_phases)

BLOCKS = ({"attn": 400, "mlp": 600},) * 4
JOB_SECONDS = 2.0
NO_VALIDATION = ValidationPlan(0, 0, 0.0, 0.0)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def loss(policy: Policy) -> float:
    ratios = policy.block_ratios or [policy.sparsity] * len(BLOCKS)
    return 1.0 + sum((r - 0.4 - 0.05 * i) ** 2 for i, r in enumerate(ratios)) + 0.01 * len(policy.metric)


class FakeExecutor(Executor):
    """One worker on the fake clock: ``wait`` runs the next job and advances the clock."""

    def __init__(self, clock: Clock, workers: int = 1):
        self.clock, self.workers = clock, workers
        self.info = {"max_batches": 4, "block_sizes": list(BLOCKS), "per_forward": 1}
        self.queue: list = []
        self.started: list[tuple[float, object]] = []  # (clock, job) as each job started

    @property
    def free(self) -> int:
        return max(0, self.workers - len(self.queue))

    def submit(self, job) -> None:
        self.started.append((self.clock.now, job))
        self.queue.append(job)

    def wait(self, timeout: float):
        if not self.queue:
            self.clock.now += timeout
            return []
        job = self.queue.pop(0)
        self.clock.now += JOB_SECONDS
        if isinstance(job, ValidationJob):
            ppl = 20.0 if job.policy is None else 10 * loss(job.policy)
            return [(job, ValidationResult(ppl, JOB_SECONDS, 1, 0.0 if job.policy is None else 0.5))]
        return [(job, tuple(ProxyResult(loss(p), p.sparsity, JOB_SECONDS, 1) for p in job.policies))]

    def abandon(self, replace: bool = True):
        jobs, self.queue = self.queue, []
        return jobs

    def damage(self, policy):
        return type("NoDamage", (), {"error": "no model in this test"})()

    def block_ratios(self, policy, allocations):
        return {}


class Counting(Strategy):
    """Proposes ``limit`` uniform policies of growing sparsity, then is done (converges early)."""

    name = "counting"

    def __init__(self, limit: int):
        self.limit, self.asked, self.told = limit, 0, []

    def ask(self, n):
        if self.asked >= self.limit:
            return []
        self.asked += 1
        return [Candidate(Policy(sparsity=0.1 + 0.01 * self.asked))]

    def tell(self, candidate, result):
        self.told.append(result.loss)

    def best(self):
        return None

    def done(self):
        return self.asked >= self.limit and len(self.told) >= self.limit


class Stack(Counting):
    stackable = True  # several candidates per ask, stacked into one job

    def ask(self, n):
        return [c for _ in range(n) for c in Counting.ask(self, 1)]


def test_plan_splits_the_budget_by_phase_and_strategy():
    split = PhaseSplit()
    ends = plan_phases(split, 1000.0, NO_VALIDATION, ["gp", "evo"], nm=False)
    assert ends == pytest.approx({"metric": split.metric, "allocation": split.metric + split.allocation})
    assert plan_phases(split, 1000.0, NO_VALIDATION, ["gp"], nm=False) == pytest.approx(
        {"metric": 1 - split.validation, "allocation": 1 - split.validation})
    assert plan_phases(split, 1000.0, NO_VALIDATION, ["evo"], nm=False)["metric"] == 0.0
    nm = plan_phases(split, 1000.0, NO_VALIDATION, ["gp", "evo"], nm=True)
    shares = split.metric + NM_ALLOCATION * split.allocation
    assert nm["metric"] == pytest.approx((1 - split.validation) * split.metric / shares)
    # validation gets at least what its planned jobs take, at most MAX_VALIDATION of the time
    heavy = ValidationPlan(10, 5, 50.0, 20.0)  # 600 s of 1000
    assert plan_phases(split, 1000.0, heavy, ["gp", "evo"], nm=False)["allocation"] == pytest.approx(0.4)
    assert plan_phases(split, 100.0, heavy, ["gp", "evo"], nm=False)["allocation"] == pytest.approx(1 - MAX_VALIDATION)


def _drive(sched: Scheduler, clock: Clock, pool: FakeExecutor) -> None:
    """The runner's loop, reduced: step, stop when the phase is over, wait for a job."""
    while True:
        for a in sched.step(clock.now, pool.free):
            if isinstance(a, Run):
                pool.submit(a.job)
        if sched.over(clock.now, pool.free, len(pool.queue)):
            return
        for job, results in pool.wait(0.5):
            sched.tell(Submitted(job.ids[0], sched.phase, "c", job.policies[0]), results[0], JOB_SECONDS)


def test_no_job_starts_that_would_end_past_the_deadline():
    clock = Clock()
    pool = FakeExecutor(clock)
    sched = Scheduler("metric", {"c": Counting(limit=1000)}, deadline=clock.now + 9.0)
    _drive(sched, clock, pool)
    starts = [t for t, _ in pool.started]
    assert starts == [1000.0, 1002.0, 1004.0, 1006.0]  # a fifth would start at 1008 and end at 1010 > 1009
    assert sched.cost == pytest.approx(JOB_SECONDS)
    assert clock.now == 1008.0  # over once nothing more fits: the next phase starts, not an idle wait


def test_steps_round_robin_cache_and_stack():
    a, b = Counting(3), Counting(3)
    sched = Scheduler("metric", {"a": a, "b": b}, deadline=math.inf)
    first, second = sched.step(0.0, 1), sched.step(0.0, 1)
    assert [type(x) for x in first] == [Submit, Run] and first[0].submitted.strategy == "a"
    assert second[0].submitted.strategy == "b" and second[0].submitted.id == first[0].submitted.id + 1
    # b proposed the same policy a did: once a's result is in, b's is answered from the cache
    sub_a = first[0].submitted
    sched.tell(sub_a, ProxyResult(1.5, 0.11, 1.0, 1), 1.0)
    again = sched._route([replace(second[0].submitted, id=99)])
    assert again == [Answer(replace(second[0].submitted, id=99), ProxyResult(1.5, 0.11, 1.0, 1))]
    assert sched.step(0.0, 0) == []  # no free worker, nothing asked
    assert a.asked == 1 and b.asked == 1

    stacked = Scheduler("metric", {"s": Stack(10)}, deadline=math.inf, per_forward=4)
    acts = stacked.step(0.0, 1)
    runs = [x for x in acts if isinstance(x, Run)]
    assert len(runs) == 1 and len(runs[0].job.ids) == 4 and isinstance(runs[0].job, ProxyJob)


def test_a_strategy_that_converges_early_ends_its_phase():
    clock = Clock()
    pool = FakeExecutor(clock)
    strat = Counting(3)
    sched = Scheduler("allocation", {"c": strat}, deadline=clock.now + 100.0)
    _drive(sched, clock, pool)
    assert strat.done() and len(pool.started) == 3 and clock.now == pytest.approx(1006.0)  # not at the deadline
    # ... and its time goes back to the metric search, once, when more than a few candidates fit
    assert extend_metric(["gp", "evo"], ["metric", "allocation"], False, left=94.0, cost=sched.cost)
    assert not extend_metric(["gp", "evo"], ["metric", "allocation", "metric"], False, left=94.0, cost=sched.cost)
    assert not extend_metric(["gp", "evo"], ["metric", "allocation"], False, left=5.0, cost=sched.cost)
    assert not extend_metric(["gp", "evo"], ["metric", "allocation"], True, left=94.0, cost=sched.cost)
    assert not extend_metric(["evo"], ["allocation"], False, left=94.0, cost=sched.cost)


def _runner(tmp_path, clock, total=200.0, spent=0.0, strategies=("gp", "random")):
    pool = FakeExecutor(clock)
    budget = Budget(total, spent, clock=clock)
    journal = Journal(tmp_path / "journal.jsonl")
    settings = SearchSettings(tuple(strategies), {"gp": {"population": 8}, "random": {"spread": 0.1}}, seed=0, top_k=2,
                              finish_reserve=0.0)
    return SearchRunner(pool, journal, budget, Policy(sparsity=0.5), settings, tmp_path), pool, journal


def test_runner_spends_the_split_on_a_fake_clock_and_resumes_by_replay(tmp_path):
    clock = Clock()
    runner, pool, journal = _runner(tmp_path, clock)
    outcome = runner.run()
    events = journal.events
    t = {(type(e).__name__, getattr(e, "phase", None)): e.t for e in events if isinstance(e, (PhaseStarted, PhaseEnded))}
    split = PhaseSplit()
    # each phase ends at its share of the budget, less at most one job (none starts that would end past it)
    for phase, end in (("metric", split.metric), ("allocation", split.metric + split.allocation)):
        assert 200 * end - JOB_SECONDS - 1e-9 <= t[("PhaseEnded", phase)] <= 200 * end + 1e-9
    assert events[-1].t <= 200.0 + JOB_SECONDS
    scored = [e for e in events if isinstance(e, Scored)]
    assert len(scored) > 40 and outcome.best_id is not None and outcome.select_perplexity is not None
    best = min((e for e in runner.entries() if e.full), key=lambda e: e.result.loss)
    assert outcome.proxy_loss <= best.result.loss * 1.5  # chosen on selection among the top-k by proxy
    journal.close()

    # an interrupted search: replaying its journal rebuilds the same state
    from autoprune.search.events import replay
    from autoprune.search.journal import read_events

    again = replay(read_events(tmp_path / "journal.jsonl"), 4)
    assert again.scored == runner.state.scored and list(again.scored) == list(runner.state.scored)
    assert again.selected == runner.state.selected and again.reported == runner.state.reported


def test_a_resumed_search_continues_where_it_stopped(tmp_path):
    """Stopped during the allocation phase: the resumed run does not repeat the metric phase or
    any candidate, and its ids continue."""
    clock = Clock()
    runner, pool, journal = _runner(tmp_path, clock)
    runner.ends = {"metric": 0.3, "allocation": 0.85}
    runner.origin = 0.0
    runner._phase("metric")
    from autoprune.search.events import PhaseEnded as End

    runner.emit(End("metric", runner.budget.elapsed))
    seen = {e.id for e in runner.entries()}
    journal.close()
    runner2, _, journal2 = _runner(tmp_path, clock, spent=runner.budget.elapsed)
    runner2.run()
    started = [e.phase for e in journal2.events if isinstance(e, PhaseStarted)]
    assert started.count("metric") == 1  # not repeated
    new = [e for e in journal2.events if isinstance(e, Submitted) and e.id not in seen]
    assert new and min(e.id for e in new) == max(seen) + 1
    assert all(e.phase == "allocation" for e in new)
