"""A search from start to end: the phases on an executor, every event journalled first.

Phases: metric search (strategies of kind ``metric``), then allocation search with the best metric
found (kind ``allocation``), then final validation (``search.validator``). In each search phase a
``Scheduler`` decides what runs; this module carries its decisions out: every event goes to the
journal first (the source of truth), then into the search state, then to the strategy and to
MLflow; strategy states are saved after every ask and tell, so an interrupted search resumes
where it stopped (``replay`` rebuilds the state, ``_restore`` the strategies).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from autoprune.messages import ProxyResult, policy_key
from autoprune.pruning.policy import Policy
from autoprune.search.base import Candidate, SearchContext, Strategy
from autoprune.search.baselines import OWL_LAMBDAS, baseline_policies
from autoprune.search.budget import Budget, PhaseSplit
from autoprune.search.events import (Evaluated, Event, Note, PhaseEnded, PhaseStarted, Reported, Scored, Selected,
                                     Submitted, replay)
from autoprune.search.executor import Executor
from autoprune.search.journal import Journal, read_json, write_json_atomic
from autoprune.search.registry import PHASES, REGISTRY, in_phase, strategy_class
from autoprune.search.scheduler import (MIN_VALIDATION, Answer, Run, Scheduler, Submit, ValidationPlan, extend_metric,
                                        plan_phases)
from autoprune.search.validator import Outcome, Validator, best_candidates

WARM_STARTS = ("owl", "alpha")  # allocations whose ratios allocation searches may start from


@dataclass(frozen=True)
class SearchSettings:
    """How a search spends its budget (from ``SearchConfig``, validated there)."""

    strategies: tuple[str, ...]
    spec: dict = field(default_factory=dict)  # every strategy's space (search.spec)
    seed: int = 0
    split: PhaseSplit = PhaseSplit()
    top_k: int = 3
    recipes: tuple[str, ...] = ()  # validated beside the winner (search.baselines)
    owl_lambdas: tuple[float, ...] = OWL_LAMBDAS
    updates: tuple[str, ...] = ("none",)
    per_forward: int | None = None  # stacked one-shot candidates per job (None: what the workers suggest)
    # estimated seconds of one validation on the selection split, without and with a weight update,
    # and of one report on the eval data
    validation_seconds: tuple[float, float, float] = (MIN_VALIDATION, MIN_VALIDATION, 0.0)
    finish_reserve: float | None = None  # seconds left at the end for results (None: 8 s + 1% of the budget)


class SearchRunner:
    def __init__(self, executor: Executor, journal: Journal, budget: Budget, base_policy: Policy,
                 settings: SearchSettings, run_dir: Path, tracker=None,
                 on_update: Callable[[dict], None] | None = None):
        self.executor, self.journal, self.budget, self.tracker = executor, journal, budget, tracker
        self.base_policy, self.settings, self.run_dir = base_policy, settings, Path(run_dir)
        self.on_update = on_update or (lambda s: None)
        self.max_batches = executor.info["max_batches"]
        self.per_forward = max(1, settings.per_forward or executor.info.get("per_forward", 1))
        self.block_sizes = tuple(dict(b) for b in executor.info["block_sizes"])
        self.baselines, self.skipped = baseline_policies(base_policy, list(settings.recipes), settings.owl_lambdas)
        s = settings.finish_reserve
        self.finish_reserve = 8.0 + 0.01 * budget.total if s is None else s
        self.state = replay(journal.events, self.max_batches)
        self.cost = 0.0  # seconds per candidate, carried from phase to phase
        # policy and fidelity -> result, so nothing is evaluated twice
        self.cache = {policy_key(e.policy, e.submitted.batches, e.sequential): e.result for e in self.state.scored.values()}
        self.status = {"phase": "", "evaluated": {}, "best": None, "retried": 0, "replaced": 0}
        for e in self.state.scored.values():  # the best so far, kept up to date one result at a time
            self._track_best(e)
        self.origin = budget.elapsed
        self.oracles: list = []  # damage oracles of the phase running, closed at its end

    # -- events ---------------------------------------------------------------------------
    def emit(self, event: Event) -> None:
        """Journal first, then the state, then MLflow."""
        self.journal.append(event)
        self.state.apply(event)
        if self.tracker is None:
            return
        if isinstance(event, Scored) and event.id in self.state.scored:
            self.tracker.log_candidate(self.state.scored[event.id].row())
        elif isinstance(event, (Selected, Reported)) and isinstance(event.key, int) and event.result.error is None:
            split = "select" if isinstance(event, Selected) else "eval"
            self.tracker.log_validation(self.state.scored[event.key].row(), {f"{split}_perplexity": event.result.perplexity})

    def _stamp(self, event_cls, *args):
        return event_cls(*args, t=self.budget.elapsed)

    def entries(self) -> list[Evaluated]:
        """Every finished candidate, in the order the results came (as the search saw them)."""
        return list(self.state.scored.values())

    # -- strategies -----------------------------------------------------------------------
    def _context(self, phase: str) -> SearchContext:
        base = self.base_policy
        if phase == "allocation":
            best = best_candidates(self.entries(), 1)
            if best:
                base = replace(base, metric=best[0].policy.metric, update=best[0].policy.update)
        d = self.run_dir / "state" / phase
        d.mkdir(parents=True, exist_ok=True)
        warm = ()
        if phase == "allocation" and base.nm is None:  # OWL's and AlphaPruning's ratios, for BO's first trials
            warm = tuple(tuple(r) for r in self.executor.block_ratios(base, list(WARM_STARTS)).values())
        damage = None
        if phase == "allocation" and "rl" in self.settings.strategies:
            damage = self._damage(base)
        return SearchContext(base, self.block_sizes, self.max_batches, self.settings.seed, d, warm,
                             self.settings.updates, damage)

    def _damage(self, base: Policy):
        """RL's per-step reward oracle where the model is (None, and a journal note, without)."""
        oracle = self.executor.damage(base)
        if oracle.error is not None:
            self.emit(self._stamp(Note, f"RL gets final rewards only: {oracle.error}"))
            return None
        self.oracles.append(oracle)
        return oracle

    def _build(self, phase: str) -> dict[str, Strategy]:
        ctx, out = self._context(phase), {}
        for name in self.settings.strategies:
            if in_phase(name, phase):
                space = dict(self.settings.spec.get(name, {}))
                if REGISTRY[name][1] == "both":
                    space = {**space, "phase": phase}
                out[name] = strategy_class(name)(replace(ctx, run_dir=ctx.run_dir / name), space)
        return out

    def _state_path(self, phase: str, name: str) -> Path:
        return self.run_dir / "state" / phase / f"{name}.json"

    def _save(self, phase: str, name: str, strategy: Strategy) -> None:
        """The strategy's state, stamped with the number of journal events it reflects."""
        write_json_atomic(self._state_path(phase, name), {"events": self.state.events, "state": strategy.state_dict()})

    def _restore(self, phase: str, strategies: dict[str, Strategy]) -> list[Submitted]:
        """Load saved states and tell each strategy the results journalled after its save; the
        candidates it had asked for that never finished are returned, to be evaluated first."""
        rerun = []
        pending = {s.id for s in self.state.pending()}
        for name, strat in strategies.items():
            saved = read_json(self._state_path(phase, name))
            pos = 0
            if saved is not None:
                strat.load_state_dict(saved["state"])
                pos = saved["events"]
            for i, e in enumerate(self.journal.events):
                sub = e if isinstance(e, Submitted) else self.state.submitted.get(e.id) if isinstance(e, Scored) else None
                if sub is None or sub.strategy != name or sub.phase != phase:
                    continue
                if isinstance(e, Scored) and i >= pos:
                    try:
                        strat.tell(Candidate(sub.policy, sub.batches, sub.tag, sub.sequential), e.result)
                    except Exception:  # noqa: BLE001 - asked after the save: the strategy cannot take it
                        pass  # (its result stays in the journal, the leaderboard and the best policy)
                elif isinstance(e, Submitted) and e.id in pending and i < pos:
                    rerun.append(e)
        return rerun

    # -- the search -----------------------------------------------------------------------
    def _deadline(self, fraction: float) -> float:
        """Clock reading at ``fraction`` of the time that was left when this run started
        (set-up and any earlier session are spent already), less the finishing reserve."""
        usable = self.budget.total - self.finish_reserve - self.origin
        return self.budget.at((self.origin + fraction * usable) / self.budget.total)

    def validation_plan(self) -> ValidationPlan:
        _, select, report_ = self.settings.validation_seconds
        reports = len(self.settings.recipes) + 2 if self.settings.recipes else 1  # their best variants, winner, dense
        return ValidationPlan(self.settings.top_k + len(self.baselines), reports, select, report_)

    def run(self) -> Outcome:
        self.origin = self.budget.elapsed
        usable = self.budget.total - self.finish_reserve - self.origin
        names = list(self.settings.strategies)
        self.ends = plan_phases(self.settings.split, usable, self.validation_plan(), names,
                                self.base_policy.nm is not None)
        for phase in PHASES:
            if phase in self.state.ended or not any(in_phase(n, phase) for n in names):
                continue
            self._phase(phase)
            self.emit(self._stamp(PhaseEnded, phase))
        left = self._deadline(self.ends["allocation"]) - self.budget.clock()
        if extend_metric(names, self.state.ended, "validation" in self.state.started, left, self.cost):
            self._phase("metric", until="allocation")
            self.emit(self._stamp(PhaseEnded, "metric"))
        return self.validate()

    def _phase(self, phase: str, until: str | None = None) -> None:
        """Run ``phase``'s strategies until that phase's deadline (or ``until``'s)."""
        clock, pool = self.budget.clock, self.executor
        self.status["phase"] = phase if until is None else f"{phase} (until the {until} deadline)"
        self.emit(self._stamp(PhaseStarted, phase))
        strategies = self._build(phase)
        rerun = self._restore(phase, strategies)
        deadline = self._deadline(self.ends[until or phase])
        self.status["deadline"] = deadline
        sched = Scheduler(phase, strategies, deadline, self.per_forward, self.cache, rerun, self.state.next_id,
                          self.cost)
        inflight: dict = {}  # job -> (its candidates, when it was sent)
        while not clock() >= deadline:
            now = clock()
            while actions := sched.step(now, pool.free):
                asked = [replace(a.submitted, t=self.budget.elapsed) for a in actions if isinstance(a, Submit)]
                for sub in asked:
                    self.emit(sub)
                if asked:
                    self._save(phase, asked[0].strategy, strategies[asked[0].strategy])
                for a in actions:
                    if isinstance(a, Answer):
                        self._record(sched, a.submitted, a.result, 0.0)
                    elif isinstance(a, Run):
                        inflight[a.job] = ([self.state.submitted[i] for i in a.job.ids], clock())
                        pool.submit(a.job)
            if sched.over(clock(), pool.free, len(inflight)):
                break
            for job, results in pool.wait(min(0.5, max(0.0, deadline - clock()))):
                self._finish(sched, inflight, job, results)
            self._update()
        for oracle in self.oracles:  # an RL agent still stepping leaves the workers alone
            oracle.close()
        self.oracles.clear()
        # a job still running at the deadline is waited for as long as a replacement worker would take
        # to start (killing it never gets the next phase going sooner), within the budget
        grace = min(max(1.0, 0.01 * self.budget.total, pool.start_seconds), max(1.0, self.budget.left / 4))
        while inflight and clock() < deadline + grace:
            for job, results in pool.wait(0.2):
                self._finish(sched, inflight, job, results)
        if inflight:
            pool.abandon()  # still running: left for a resume, not waited for
        self.cost = sched.cost
        self._update()

    def _finish(self, sched: Scheduler, inflight: dict, job, results: tuple[ProxyResult, ...]) -> None:
        subs, t0 = inflight.pop(job)
        wall = (self.budget.clock() - t0) / len(subs)
        for sub, res in zip(subs, results):
            self._record(sched, sub, res, wall)

    def _record(self, sched: Scheduler, sub: Submitted, result: ProxyResult, wall: float) -> None:
        self.emit(self._stamp(Scored, sub.id, result))
        sched.tell(sub, result, wall)
        self._save(sub.phase, sub.strategy, sched.strategies[sub.strategy])
        self._track_best(self.state.scored[sub.id])
        ev = self.status["evaluated"]
        ev[sub.strategy] = ev.get(sub.strategy, 0) + 1

    def _track_best(self, e: Evaluated) -> None:
        """The status's best: the lowest full-fidelity loss, one-shot before sequential (as
        ``best_candidates(.., 1, sequential_first=False)``), updated one result at a time."""
        if not e.full:
            return
        best = self.status["best"]
        if best is None or (e.sequential, e.result.loss) < (bool(best.get("sequential")), best["result"]["loss"]):
            self.status["best"] = e.row()

    def _update(self) -> None:
        self.status.update(retried=self.executor.retried, replaced=self.executor.replaced, left=self.budget.left,
                           total=len(self.state.scored))
        self.on_update(self.status)

    def validate(self) -> Outcome:
        self.status["phase"] = "validation"
        self.emit(self._stamp(PhaseStarted, "validation"))
        end = self._deadline(1.0)
        self.status["deadline"] = end

        def progress(done: tuple[int, int]) -> None:
            self.status["validations"] = done
            self._update()

        validator = Validator(self.executor, self.state, self.emit, self.baselines, list(self.settings.recipes),
                              self.skipped, self.settings.top_k, self.settings.validation_seconds, self.budget.clock,
                              progress)
        return validator.run(self.base_policy, end)

