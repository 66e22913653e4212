"""Which candidates run next, and when each phase ends: pure functions of the strategies, the
clock reading and the free workers (no I/O, no clock of its own, no Ray), so a test drives it
with a fake clock.

``plan_phases`` splits the usable time into the metric phase, the allocation phase and final
validation; ``Scheduler`` runs one phase: each ``step`` asks one strategy (round-robin) for
candidates and says what to do with them (``Submit`` them to the journal, ``Answer`` the ones
the cache already scored, ``Run`` the rest as jobs; the caller stamps the time), never starting a job whose estimated cost
would carry past the phase's deadline.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoprune.messages import ProxyJob, ProxyResult, policy_key
from autoprune.search.base import Candidate, Strategy
from autoprune.search.budget import PhaseSplit
from autoprune.search.events import Submitted
from autoprune.search.registry import PHASES, in_phase

MIN_VALIDATION = 6.0  # seconds per planned validation (the top-k and the baselines) in short budgets
MAX_VALIDATION = 0.7  # of the usable time, at most, planned for validation
NM_ALLOCATION = 0.2  # the allocation phase's share under an N:M pattern, relative to the split's


@dataclass(frozen=True)
class ValidationPlan:
    """What final validation will run: selections on the selection split (the top-k candidates
    and every recipe variant) and reports on the evaluation data, with their estimated seconds."""

    selections: int
    reports: int
    select_seconds: float
    report_seconds: float

    @property
    def seconds(self) -> float:
        return self.selections * max(self.select_seconds, MIN_VALIDATION) + self.reports * self.report_seconds


def plan_phases(split: PhaseSplit, usable: float, validation: ValidationPlan, strategies: list[str],
                nm: bool) -> dict[str, float]:
    """Fractions of the usable seconds at which the metric and allocation phases end.

    Validation gets its share of the split, but at least the planned validations' estimated time,
    up to ``MAX_VALIDATION``. A phase no strategy searches gets no time; under an N:M pattern the
    allocation phase only chooses the weight update and gets ``NM_ALLOCATION`` of its share."""
    val = max(split.validation, min(MAX_VALIDATION, validation.seconds / max(usable, 1e-9)))
    has = {p: any(in_phase(n, p) for n in strategies) for p in PHASES}
    share = {"metric": split.metric if has["metric"] else 0.0,
             "allocation": split.allocation if has["allocation"] else 0.0}
    if nm and has["metric"]:
        share["allocation"] *= NM_ALLOCATION
    total = sum(share.values()) or 1.0
    return {"metric": (1.0 - val) * share["metric"] / total, "allocation": 1.0 - val}


def extend_metric(strategies: list[str], ended: list[str], validating: bool, left: float, cost: float) -> bool:
    """Whether the metric search goes on until the allocation phase's deadline: the allocation
    strategies converged early (under N:M evolution only picks the update) and left time that
    fits more than a few candidates (``left`` seconds to that deadline, ``cost`` per candidate).
    Once only: ``ended`` holds "metric" twice after an extension."""
    both = all(any(in_phase(n, p) for n in strategies) for p in PHASES)
    return both and ended.count("metric") < 2 and not validating and left > max(5.0, 3 * cost)


@dataclass(frozen=True)
class Submit:
    """A new candidate: journal it (and save its strategy's state) before anything else."""

    submitted: Submitted


@dataclass(frozen=True)
class Answer:
    """A candidate the cache has scored at this fidelity: its result, at once."""

    submitted: Submitted
    result: ProxyResult


@dataclass(frozen=True)
class Run:
    """A job for the executor."""

    job: ProxyJob


Action = Submit | Answer | Run


class Scheduler:
    """One phase's candidates: ``step`` says what to send next, ``tell`` takes a result back.

    ``cache``: policy key -> result of every candidate scored so far (nothing is evaluated twice);
    ``rerun``: candidates submitted before a restart that never finished, sent first;
    ``per_forward``: one-shot candidates of a stackable strategy stacked into one job."""

    def __init__(self, phase: str, strategies: dict[str, Strategy], deadline: float, per_forward: int = 1,
                 cache: dict[str, ProxyResult] | None = None, rerun: list[Submitted] = (), next_id: int = 1,
                 cost: float = 0.0):
        self.phase, self.strategies, self.deadline = phase, strategies, deadline
        self.per_forward = max(1, per_forward)
        self.cache = {} if cache is None else cache
        self.rerun = list(rerun)
        self.next_id = next_id
        self.cost = cost  # moving estimate of seconds per candidate (wall, including dispatch)
        self.asked: dict[int, Candidate] = {}  # id -> the candidate as its strategy made it
        self._order = list(strategies)
        self._turn = 0

    def step(self, now: float, free: int) -> list[Action]:
        """What to do with the next candidates: one rerun, or one strategy's answer to ``ask``
        (round-robin); nothing when no worker is free, the next candidate would end past the
        deadline, or no strategy proposes anything now."""
        if free <= 0 or now + self.cost >= self.deadline:
            return []
        if self.rerun:
            sub = self.rerun.pop(0)
            self.asked[sub.id] = Candidate(sub.policy, sub.batches, sub.tag, sub.sequential)
            return self._route([sub])
        for k in range(len(self._order)):
            name = self._order[(self._turn + k) % len(self._order)]
            strategy = self.strategies[name]
            if strategy.done():
                continue
            got = strategy.ask(self.per_forward if strategy.stackable else 1)
            if got:
                self._turn += 1
                subs = []
                for cand in got:
                    sub = Submitted(self.next_id, self.phase, name, cand.policy, cand.batches, cand.sequential,
                                    cand.tag)
                    self.next_id += 1
                    self.asked[sub.id] = cand
                    subs.append(sub)
                return [Submit(s) for s in subs] + self._route(subs)
        self._turn += 1
        return []

    def _route(self, subs: list[Submitted]) -> list[Action]:
        """Cached candidates answered; the rest as jobs: one per candidate under the sequential
        protocol or without stacking, one-shot candidates of one fidelity as one stacked job."""
        out: list[Action] = []
        groups: dict[int | None, list[Submitted]] = {}
        for sub in subs:
            cached = self.cache.get(policy_key(sub.policy, sub.batches, sub.sequential))
            if cached is not None:
                out.append(Answer(sub, cached))
            elif sub.sequential or self.per_forward == 1:
                out.append(Run(ProxyJob((sub.id,), (sub.policy,), sub.batches, sub.sequential)))
            else:
                groups.setdefault(sub.batches, []).append(sub)
        for batches, group in groups.items():
            out.append(Run(ProxyJob(tuple(s.id for s in group), tuple(s.policy for s in group), batches)))
        return out

    def tell(self, sub: Submitted, result: ProxyResult, wall: float) -> None:
        """A candidate's result (``wall``: the seconds it took, a stacked job's shared out): into
        the cache, the cost estimate and its strategy."""
        self.cache[policy_key(sub.policy, sub.batches, sub.sequential)] = result
        wall -= result.prepared  # statistics collected once are no candidate's running cost
        if wall > 0:
            self.cost = wall if self.cost == 0 else 0.8 * self.cost + 0.2 * wall
        cand = self.asked.pop(sub.id, None) or Candidate(sub.policy, sub.batches, sub.tag, sub.sequential)
        self.strategies[sub.strategy].tell(cand, result)

    def over(self, now: float, free: int, running: int) -> bool:
        """The phase is over: its deadline has passed, or nothing runs and nothing more was sent
        though a worker is free (or every strategy is done)."""
        if now >= self.deadline:
            return True
        return running == 0 and (free > 0 or all(s.done() for s in self.strategies.values()))
