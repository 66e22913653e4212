"""The orchestrator: spends a time budget across the strategies on one pool of Ray workers.

Phases: metric search (strategies of kind ``metric``), then allocation search with the best
metric found (kind ``allocation``), then final validation of the top candidates by the full
sequential protocol. Candidates from every strategy of a phase go through one pool, round-robin.
Nothing is submitted that its estimated cost would carry past the phase's deadline. Every
result goes to the journal first (the source of truth), then to its strategy, then to MLflow;
strategy states are saved after every ask and tell, so an interrupted search resumes where it
stopped.
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from autoprune.errors import UserError
from autoprune.evaluation.proxy import ProxyResult
from autoprune.pruning.policy import Policy
from autoprune.search.base import Candidate, SearchContext, Strategy
from autoprune.search.baselines import DENSE, OWL_LAMBDAS, baseline_policies, best_variants, recipe, report
from autoprune.search.budget import Budget, PhaseSplit
from autoprune.search.journal import Journal, read_json, write_json_atomic
from autoprune.search.spec import resolve as resolve_spec

if TYPE_CHECKING:
    from autoprune.search.workers import RemoteDamage

# name -> (import path, phase: "metric", "allocation" or "both")
REGISTRY: dict[str, tuple[str, str]] = {
    "gp": ("autoprune.search.gp:GPStrategy", "metric"),
    "bo": ("autoprune.search.bo:BOSpaces", "allocation"),
    "rl": ("autoprune.search.rl:RLStrategy", "allocation"),
    "evo": ("autoprune.search.evo:EvoStrategy", "allocation"),
    "random": ("autoprune.search.random_search:RandomStrategy", "both"),
}
PHASES = ("metric", "allocation")
MIN_VALIDATION = 6.0  # seconds per planned validation (the top-k and the baselines) in short budgets
MAX_VALIDATION = 0.7  # of the usable time, at most, planned for validation
NM_ALLOCATION = 0.2  # the allocation phase's share under an N:M pattern, relative to the split's
VALIDATION_POOL = 50  # candidates, best first, that validation may reach when time allows
WARM_STARTS = ("owl", "alpha")  # allocations whose ratios allocation searches may start from


def strategy_class(name: str) -> type[Strategy]:
    if name not in REGISTRY:
        raise UserError(f"unknown strategy {name!r} (choose {', '.join(REGISTRY)})")
    module, cls = REGISTRY[name][0].split(":")
    return getattr(importlib.import_module(module), cls)


def in_phase(name: str, phase: str) -> bool:
    return REGISTRY[name][1] in (phase, "both")


def policy_key(policy: dict, batches, sequential: bool = False) -> str:
    d = {k: v for k, v in policy.items() if k != "meta"}
    return json.dumps([d, batches, "sequential"] if sequential else [d, batches], sort_keys=True)


@dataclass
class Outcome:
    best: Policy  # validated best, else best by proxy, else (nothing finished) the base policy
    best_id: int | None
    proxy_loss: float | None
    perplexity: float | None  # on the eval data, when validated
    validated: list[dict]  # {"id", "select_perplexity", "eval_perplexity", "sparsity", "proxy_loss", "block_ratios"}
    baselines: list[dict]  # {"name", "perplexity", ..., "improvement"} or {"name", "skipped"} (search.baselines)
    select_perplexity: float | None = None  # the winner's, on the selection split, where it was chosen
    recipe: str | None = None  # the recipe that beat every candidate on the selection split, if one did


class Orchestrator:
    def __init__(self, pool, journal: Journal, budget: Budget, base_policy: Policy, strategies: list[str],
                 run_dir: Path, seed: int, tracker=None, split: PhaseSplit = PhaseSplit(), top_k: int = 3,
                 on_update: Callable[[dict], None] | None = None, spec: dict | None = None,
                 finish_reserve: float | None = None, baselines: list[str] = (), per_forward: int | None = None,
                 owl_lambdas: tuple[float, ...] = OWL_LAMBDAS, updates: tuple[str, ...] = ("none",),
                 validation_seconds: tuple[float, float, float] = (MIN_VALIDATION, MIN_VALIDATION, 0.0)):
        """``per_forward``: one-shot candidates of one strategy and fidelity sent to a worker as one
        job and stacked into one forward pass (None: what the workers suggest for their device)."""
        self.pool, self.journal, self.budget, self.tracker = pool, journal, budget, tracker
        self.base_policy, self.names, self.run_dir, self.seed = base_policy, strategies, Path(run_dir), seed
        self.top_k, self.on_update = top_k, on_update or (lambda s: None)
        self.spec = resolve_spec() if spec is None else spec  # every strategy's space (search.spec)
        self.max_batches = pool.info["max_batches"]
        self.per_forward = max(1, per_forward or pool.info.get("per_forward", 1))
        self.block_sizes = tuple(dict(b) for b in pool.info["block_sizes"])
        self.split = split
        self.recipes = list(baselines)
        self.baselines, self.skipped = baseline_policies(base_policy, self.recipes, owl_lambdas)
        self.updates = tuple(updates)
        # estimated seconds of one validation on the selection split (without and with a weight update)
        # and of one report on the eval data
        self.validation_seconds = validation_seconds
        # seconds left at the end to write results and stop the workers
        self.finish_reserve = 8.0 + 0.01 * budget.total if finish_reserve is None else finish_reserve
        self.origin = budget.elapsed
        self.cost = 0.0  # moving estimate of seconds per candidate (wall, including dispatch)
        self.cache: dict[str, dict] = {}  # policy + fidelity -> result, so nothing is evaluated twice
        for e in journal.results().values():
            self.cache[policy_key(e["policy"], e.get("batches"), e.get("sequential", False))] = e["result"]
        self.status = {"phase": "", "evaluated": {}, "best": None, "retried": 0, "replaced": 0}
        for cid in journal.results():  # the best so far, kept up to date by _record (not re-sorted twice a second)
            self._track_best(self.entry(cid))
        self.oracles: list[RemoteDamage] = []  # oracles of the phase running, closed at its end

    def _log(self, event: dict) -> dict:
        return self.journal.append({**event, "t": round(self.budget.elapsed, 3)})

    # -- strategies -----------------------------------------------------------------------
    def _context(self, phase: str) -> SearchContext:
        base = self.base_policy
        if phase == "allocation":
            best = self.best_entries(1)
            if best:
                p = best[0]["policy"]
                base = replace(base, metric=p["metric"], update=p["update"])
        d = self.run_dir / "state" / phase
        d.mkdir(parents=True, exist_ok=True)
        warm = ()
        if phase == "allocation" and base.nm is None:  # OWL's and AlphaPruning's ratios, for BO's first trials
            warm = tuple(tuple(r) for r in self.pool.block_ratios(base.to_dict(), list(WARM_STARTS)).values())
        return SearchContext(base, self.block_sizes, self.max_batches, self.seed, d, warm, self.updates)

    def _build(self, phase: str) -> dict[str, Strategy]:
        ctx, out = self._context(phase), {}
        for name in self.names:
            if in_phase(name, phase):
                space = dict(self.spec.get(name, {}))
                if REGISTRY[name][1] == "both":
                    space = {**space, "phase": phase}
                extra = {"damage": self._damage(ctx.base_policy)} if name == "rl" else {}
                out[name] = strategy_class(name)(replace(ctx, run_dir=ctx.run_dir / name), space, **extra)
        return out

    def _damage(self, base: Policy) -> RemoteDamage | None:
        """RL's per-step reward oracle: block damage on a worker (None, and a journal note, without)."""
        oracle = self.pool.damage(base.to_dict())
        if oracle.error is not None:
            self._log({"event": "note", "text": f"RL gets final rewards only: {oracle.error}"})
            return None
        self.oracles.append(oracle)
        return oracle

    def _state_path(self, phase: str, name: str) -> Path:
        return self.run_dir / "state" / phase / f"{name}.json"

    def _save(self, phase: str, name: str, strategy: Strategy) -> None:
        """The strategy's state, stamped with the number of journal events it reflects."""
        write_json_atomic(self._state_path(phase, name), {"events": len(self.journal.events),
                                                          "state": strategy.state_dict()})

    def _restore(self, phase: str, strategies: dict[str, Strategy]) -> list[tuple[int, str, Candidate]]:
        """Load saved states and tell each strategy the results journalled after its save; the
        candidates it had asked for that never finished are returned, to be evaluated first."""
        rerun = []
        results, events = self.journal.results(), self.journal.events
        for name, strat in strategies.items():
            saved = read_json(self._state_path(phase, name))
            pos = 0
            if saved is not None:
                strat.load_state_dict(saved["state"])
                pos = saved["events"]
            mine = [(i, e) for i, e in enumerate(events) if e["event"] in ("submit", "result")
                    and (results.get(e["id"]) or e).get("strategy") == name
                    and (results.get(e["id"]) or e).get("phase") == phase]
            for i, e in mine:
                if e["event"] == "result" and i >= pos:
                    try:
                        strat.tell(_candidate(results[e["id"]]), ProxyResult(**e["result"]))
                    except Exception:  # noqa: BLE001 - asked after the save: the strategy cannot take it
                        pass  # (its result stays in the journal, the leaderboard and the best policy)
            pending = {e["id"] for e in self.journal.pending()}
            rerun += [(e["id"], name, _candidate(e)) for i, e in mine
                      if e["event"] == "submit" and e["id"] in pending and i < pos]
        return rerun

    # -- the search loop ------------------------------------------------------------------
    def _deadline(self, fraction: float) -> float:
        """Clock reading at ``fraction`` of the time that was left when this run started
        (set-up and any earlier session are spent already), less the finishing reserve."""
        usable = self.budget.total - self.finish_reserve - self.origin
        return self.budget.at((self.origin + fraction * usable) / self.budget.total)

    def _plan(self) -> dict[str, float]:
        """Fractions of the usable time at which the metric and allocation phases end.

        Validation gets its share of the split, but at least the estimated time of the planned
        validations (the top-k and every recipe variant on the selection split, then the winner,
        each recipe and the dense model on the evaluation data), up to ``MAX_VALIDATION``.
        """
        usable = max(1e-9, self.budget.total - self.finish_reserve - self.origin)
        _, select, report_ = self.validation_seconds
        recipes = len(self.recipes) + 2 if self.recipes else 1  # their best variants, the winner, dense
        planned = (self.top_k + len(self.baselines)) * max(select, MIN_VALIDATION) + recipes * report_
        val = max(self.split.validation, min(MAX_VALIDATION, planned / usable))
        searched = 1.0 - val
        has = {p: any(in_phase(n, p) for n in self.names) for p in PHASES}
        share = {"metric": self.split.metric if has["metric"] else 0.0,
                 "allocation": self.split.allocation if has["allocation"] else 0.0}
        if self.base_policy.nm is not None and has["metric"]:
            share["allocation"] *= NM_ALLOCATION  # N:M fixes every ratio: only the update is left to choose
        total = sum(share.values()) or 1.0
        metric_end = searched * share["metric"] / total
        return {"metric": metric_end, "allocation": searched}

    def run(self) -> Outcome:
        self.origin = self.budget.elapsed
        self.ends = self._plan()
        ended = {e["phase"] for e in self.journal.of("phase_end")}
        for phase in PHASES:
            if phase in ended or not any(in_phase(n, phase) for n in self.names):
                continue
            self._phase(phase)
            self._log({"event": "phase_end", "phase": phase})
        # allocation strategies that converged early (under N:M evolution only picks the update) leave
        # their time to the metric search, which goes on until the allocation phase's deadline
        has = [any(in_phase(n, p) for n in self.names) for p in PHASES]
        ended_metric = sum(e["phase"] == "metric" for e in self.journal.of("phase_end"))  # 2: extended already
        validating = any(e["phase"] == "validation" for e in self.journal.of("phase_start"))
        if (all(has) and ended_metric < 2 and not validating
                and self._deadline(self.ends["allocation"]) - time.monotonic() > max(5.0, 3 * self.cost)):
            self._phase("metric", until="allocation")
            self._log({"event": "phase_end", "phase": "metric"})
        return self.validate()

    def _phase(self, phase: str, until: str | None = None) -> None:
        """Run ``phase``'s strategies until that phase's deadline (or ``until``'s)."""
        self.status["phase"] = phase if until is None else f"{phase} (until the {until} deadline)"
        self._log({"event": "phase_start", "phase": phase})
        strategies = self._build(phase)
        rerun = self._restore(phase, strategies)
        deadline = self._deadline(self.ends[until or phase])
        self.status["deadline"] = deadline
        inflight: dict[int, tuple[str, Candidate, float]] = {}
        order = list(strategies)
        turn = 0
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            while self.pool.free > 0 and now + self.cost < deadline:
                if rerun:
                    cid, name, cand = rerun.pop(0)
                    batch = [(cid, cand)]
                else:
                    got: list[Candidate] = []
                    for k in range(len(order)):
                        name = order[(turn + k) % len(order)]
                        if strategies[name].done():
                            continue
                        got = strategies[name].ask(self.per_forward if strategies[name].stackable else 1)
                        if got:
                            break
                    turn += 1
                    if not got:
                        break
                    batch = []
                    for cand in got:
                        cid = self.journal.new_id()
                        self._log({"event": "submit", "id": cid, "phase": phase, "strategy": name,
                                   "policy": cand.policy.to_dict(), "batches": cand.batches,
                                   "sequential": cand.sequential, "tag": _jsonable(cand.tag)})
                        batch.append((cid, cand))
                    self._save(phase, name, strategies[name])
                self._submit(phase, strategies, name, batch, inflight)
            if not inflight and (all(s.done() for s in strategies.values()) or self.pool.free > 0):
                break  # nothing running and nothing more to propose
            for key, res in self.pool.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
                self._finish_job(phase, strategies, inflight, key, res)
            self._update()
        for oracle in self.oracles:  # an RL agent still stepping leaves the workers alone
            oracle.close()
        self.oracles.clear()
        # a job still running at the deadline is waited for as long as a replacement worker would take
        # to start (killing it never gets the next phase going sooner), within the budget
        grace = min(max(1.0, 0.01 * self.budget.total, self.pool.start_seconds), max(1.0, self.budget.left / 4))
        while inflight and time.monotonic() < deadline + grace:
            for key, res in self.pool.wait(0.2):
                self._finish_job(phase, strategies, inflight, key, res)
        if inflight:
            self.pool.abandon()  # still running: left for a resume, not waited for
        self._update()

    def _submit(self, phase, strategies, name: str, batch: list[tuple[int, Candidate]], inflight: dict) -> None:
        """Answer from the cache what it holds; send the rest to the pool: one job per candidate
        under the sequential protocol, one-shot candidates of one fidelity as one stacked job."""
        groups: dict = {}
        for cid, cand in batch:
            cached = self.cache.get(policy_key(cand.policy.to_dict(), cand.batches, cand.sequential))
            if cached is not None:
                self._record(phase, strategies, name, cid, cand, cached, 0.0)
                continue
            inflight[cid] = (name, cand, time.monotonic())
            if cand.sequential or self.per_forward == 1:
                self.pool.submit(cid, "evaluate", cand.policy.to_dict(), cand.batches, cand.sequential)
            else:
                groups.setdefault(cand.batches, []).append((cid, cand))
        for batches, group in groups.items():
            if len(group) == 1:
                cid, cand = group[0]
                self.pool.submit(cid, "evaluate", cand.policy.to_dict(), batches)
            else:
                self.pool.submit(tuple(c for c, _ in group), "evaluate_many", [c.policy.to_dict() for _, c in group],
                                 batches)

    def _finish_job(self, phase, strategies, inflight: dict, key, result) -> None:
        """Record a finished job's results: one candidate's, or a stacked job's list (an error
        from the job is every one of its candidates' result)."""
        cids = key if isinstance(key, tuple) else (key,)
        results = result if isinstance(result, list) else [result] * len(cids)
        for cid, res in zip(cids, results):
            name, cand, t0 = inflight.pop(cid)
            self._record(phase, strategies, name, cid, cand, res, (time.monotonic() - t0) / len(cids))

    def _record(self, phase, strategies, name, cid, cand, result: dict, wall: float) -> None:
        if "loss" not in result:  # the worker raised instead of returning a result
            result = asdict(ProxyResult(math.inf, math.nan, wall, 0, result["error"]))
        self._log({"event": "result", "id": cid, "result": result})
        self.cache[policy_key(cand.policy.to_dict(), cand.batches, cand.sequential)] = result
        wall -= result.get("prepared", 0.0)  # statistics collected once are no candidate's running cost
        if wall > 0:
            self.cost = wall if self.cost == 0 else 0.8 * self.cost + 0.2 * wall
        strategies[name].tell(cand, ProxyResult(**result))
        self._save(phase, name, strategies[name])
        entry = self.entry(cid)
        self._track_best(entry)
        if self.tracker is not None:
            self.tracker.log_candidate(entry)
        ev = self.status["evaluated"]
        ev[name] = ev.get(name, 0) + 1

    def entry(self, cid: int) -> dict:
        e = self.journal.results()[cid]
        return {**e, "fidelity": 1.0 if e.get("batches") is None else min(1.0, e["batches"] / self.max_batches)}

    def entries(self) -> list[dict]:
        """Every finished candidate, in the order the results came (as the search saw them)."""
        return [self.entry(cid) for cid in self.journal.results()]

    def best_entries(self, k: int, sequential_first: bool = True) -> list[dict]:
        """The ``k`` best distinct full-fidelity policies by proxy loss. Losses under the sequential
        protocol are not on the one-shot scale, so the two rankings are interleaved, sequential
        first (the metric the allocation phase builds on) unless ``sequential_first`` is False
        (validation: the allocation phase's one-shot candidates, built on that metric, lead)."""
        seen, out = set(), []
        full = [e for e in self.entries() if e["fidelity"] >= 1.0 and e["result"]["error"] is None]
        tiers = [sorted((e for e in full if bool(e.get("sequential")) is seq), key=lambda e: e["result"]["loss"])
                 for seq in ((True, False) if sequential_first else (False, True))]
        for e in (e for pair in itertools.zip_longest(*tiers) for e in pair if e is not None):
            key = policy_key(e["policy"], None)
            if key not in seen:
                seen.add(key)
                out.append(e)
            if len(out) == k:
                break
        return out

    def _track_best(self, e: dict) -> None:
        """The status's best: the lowest full-fidelity loss, one-shot before sequential (as
        ``best_entries(1, sequential_first=False)``), updated one result at a time."""
        if e["fidelity"] < 1.0 or e["result"]["error"] is not None:
            return
        rank = (bool(e.get("sequential")), e["result"]["loss"])
        best = self.status["best"]
        if best is None or rank < (bool(best.get("sequential")), best["result"]["loss"]):
            self.status["best"] = e

    def _update(self) -> None:
        self.status.update(retried=self.pool.retried, replaced=self.pool.replaced, left=self.budget.left,
                           total=len(self.journal.results()))
        self.on_update(self.status)

    # -- final validation -----------------------------------------------------------------
    def validate(self) -> Outcome:
        """Full sequential protocol, first on the selection split, then on the evaluation data.

        In order, each job while one more still fits in the time left: the ``top_k`` best
        candidates by proxy loss and every recipe (``search.baselines``) on the selection split;
        then, on the evaluation data, the winner (the lowest selection perplexity among candidates
        *and* recipes), each recipe's best variant and the dense model; then further candidates
        on the selection split (and the evaluation data, should one take the lead). The
        evaluation data decides nothing. Pool keys: (candidate id or recipe key, split)."""
        self.status["phase"] = "validation"
        self._log({"event": "phase_start", "phase": "validation"})
        selected: dict = {e["id"]: e["result"] for e in self.journal.of("validate")}
        selected.update({e["name"]: e["result"] for e in self.journal.of("baseline")})
        reported: dict = {e["key"]: e["result"] for e in self.journal.of("report")}
        ranked = self.best_entries(max(self.top_k, VALIDATION_POOL), sequential_first=False)
        policies: dict = {e["id"]: e["policy"] for e in ranked}
        policies.update({k: p.to_dict() if p is not None else None for k, p in self.baselines.items()})
        # the best candidate, then the recipes (strongest first: the comparison must be complete), then
        # the rest of the top-k; the next best candidates after the reports, while time allows
        top = [e["id"] for e in ranked[:self.top_k]]
        first = top[:1] + [k for k in self.baselines if k != DENSE] + top[1:]
        later = [e["id"] for e in ranked[self.top_k:]]

        def winner():
            ok = {k: r for k, r in selected.items() if k != DENSE and "error" not in r}
            return min(ok, key=lambda k: ok[k]["perplexity"]) if ok else None

        # the slowest job so far (worker seconds) of each kind: a report, or a selection by weight update
        # (an ADMM reconstruction costs more than none); until measured, the estimates
        slowest: dict[str, float] = {}
        select_plain, select_update, report_cost = self.validation_seconds

        def kind(job) -> str:
            return "eval" if job[1] == "eval" else f"select/{(policies[job[0]] or {}).get('update', 'none')}"

        def cost(k: str) -> float:
            if k in slowest:
                return slowest[k]
            if k == "eval":
                return report_cost
            measured = [v for key, v in slowest.items() if key.startswith("select/") and key != "select/none"]
            return select_plain if k == "select/none" else max([select_update, *measured])

        def fits(job, wanted: list) -> bool:
            """One more job fits in the time left; a selection also leaves time for its own report and
            those still due (the winner, each selected recipe, the dense model), so the evaluation data
            always sees what the selection chose."""
            left = end - time.monotonic()
            if job[1] == "eval":
                return cost("eval") <= left
            due = sum(1 for k in wanted if k is not None and k not in reported) + 1
            return cost(kind(job)) + due * cost("eval") <= left

        def next_job(running: set):
            recipes = {k: r for k, r in selected.items() if isinstance(k, str)}
            wanted = [winner(), *best_variants(recipes).values(), *([DENSE] if DENSE in self.baselines else [])]
            jobs = ([(k, "select") for k in first if k not in selected]
                    + [(k, "eval") for k in wanted if k is not None and (k in selected or k == DENSE)
                       and k not in reported]
                    + [(k, "select") for k in later if k not in selected])
            jobs = [j for j in dict.fromkeys(jobs) if j not in running]
            if jobs and not running and not selected:
                return jobs[0]  # something is always validated, however short the time
            return next((j for j in jobs if fits(j, wanted)), None)

        running: set = set()
        end = self._deadline(1.0)
        planned = len(first) + (len(self.recipes) + 2 if self.recipes else 1)  # selections, then reports
        self.status.update(deadline=end, validations=(len(selected) + len(reported), planned))
        while time.monotonic() < end:
            while self.pool.free > 0:
                job = next_job(running)
                if job is None:
                    break
                self.pool.submit(job, "validate", policies[job[0]], None, job[1])
                running.add(job)
            if not running:
                break
            for (key, split), res in self.pool.wait(min(0.5, max(0.0, end - time.monotonic()))):
                res = {"perplexity": math.inf, **res} if "error" in res else res
                running.discard((key, split))
                k = kind((key, split))
                slowest[k] = max(slowest.get(k, 0.0), res.get("seconds", 0.0))
                if split == "eval":
                    self._log({"event": "report", "key": key, "result": res})
                    reported[key] = res
                else:
                    event = {"event": "baseline", "name": key} if isinstance(key, str) else {"event": "validate", "id": key}
                    self._log({**event, "result": res})
                    selected[key] = res
                self.status["validations"] = (len(selected) + len(reported), max(planned, len(selected) + len(reported)))
                if self.tracker is not None and "error" not in res and isinstance(key, int):
                    self.tracker.log_validation(self.entry(key), {f"{split}_perplexity": res["perplexity"]})
            self._update()
        if running:
            self.pool.abandon(replace=False)  # the search is over: no new workers
        validated = [{"id": e["id"], "policy": e["policy"], "proxy_loss": e["result"]["loss"], **selected[e["id"]],
                      "select_perplexity": selected[e["id"]]["perplexity"],
                      "eval_perplexity": reported.get(e["id"], {}).get("perplexity")}
                     for e in ranked if e["id"] in selected and "error" not in selected[e["id"]]]
        win = winner()
        if win is not None:
            by_id = {e["id"]: e for e in ranked}
            outcome = Outcome(Policy.from_dict(policies[win]), win if isinstance(win, int) else None,
                              by_id[win]["result"]["loss"] if isinstance(win, int) else None,
                              reported.get(win, {}).get("perplexity"), validated, [],
                              select_perplexity=selected[win]["perplexity"],
                              recipe=recipe(win) if isinstance(win, str) else None)
        elif ranked:  # stopped before any validation finished: the best by proxy
            best = ranked[0]
            outcome = Outcome(Policy.from_dict(best["policy"]), best["id"], best["result"]["loss"], None, [], [])
        else:  # nothing finished (the budget went on start-up): the target with the default metric
            outcome = Outcome(self.base_policy, None, None, None, [], [])
        outcome.baselines = report(self.recipes, self.baselines, self.skipped,
                                   {k: v for k, v in selected.items() if isinstance(k, str)}, reported,
                                   outcome.perplexity)
        return outcome


def _candidate(e: dict) -> Candidate:
    return Candidate(Policy.from_dict(e["policy"]), e.get("batches"), e.get("tag") or {}, e.get("sequential", False))


def _jsonable(tag: dict) -> dict:
    try:
        json.dumps(tag)
        return tag
    except TypeError:
        return {}
