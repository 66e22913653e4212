"""Final validation: the full sequential protocol on the top candidates and the recipes, first on
the selection split (where the winner is chosen), then on the evaluation data (which only reports).

In order, each job while one more still fits in the time left: the ``top_k`` best candidates by
proxy loss and every recipe (``search.baselines``) on the selection split; then, on the evaluation
data, the winner (the lowest selection perplexity among candidates *and* recipes), each recipe's
best variant and the dense model; then further candidates on the selection split (and the
evaluation data, should one take the lead). The evaluation data decides nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass

from autoprune.messages import ValidationJob, ValidationResult, policy_key
from autoprune.pruning.policy import Policy
from autoprune.search.baselines import DENSE, best_variants, recipe, report
from autoprune.search.events import Evaluated, Event, Reported, SearchState, Selected
from autoprune.search.executor import Executor

VALIDATION_POOL = 50  # candidates, best first, that validation may reach when time allows


@dataclass
class Outcome:
    best: Policy  # validated best, else best by proxy, else (nothing finished) the base policy
    best_id: int | None
    proxy_loss: float | None
    perplexity: float | None  # on the eval data, when validated
    validated: list[dict]  # {"id", "policy", "proxy_loss", "select_perplexity", "eval_perplexity", "block_ratios", ...}
    baselines: list[dict]  # {"name", "perplexity", ..., "improvement"} or {"name", "skipped"} (search.baselines)
    select_perplexity: float | None = None  # the winner's, on the selection split, where it was chosen
    recipe: str | None = None  # the recipe that beat every candidate on the selection split, if one did


def best_candidates(scored: list[Evaluated], k: int, sequential_first: bool = True) -> list[Evaluated]:
    """The ``k`` best distinct full-fidelity policies by proxy loss. Losses under the sequential
    protocol are not on the one-shot scale, so the two rankings are interleaved, sequential first
    (the metric the allocation phase builds on) unless ``sequential_first`` is False (validation:
    the allocation phase's one-shot candidates, built on that metric, lead)."""
    seen, out = set(), []
    full = [e for e in scored if e.full]
    tiers = [sorted((e for e in full if e.sequential is seq), key=lambda e: e.result.loss)
             for seq in ((True, False) if sequential_first else (False, True))]
    for e in (e for pair in itertools.zip_longest(*tiers) for e in pair if e is not None):
        key = policy_key(e.policy)
        if key not in seen:
            seen.add(key)
            out.append(e)
        if len(out) == k:
            break
    return out


class Validator:
    """Runs final validation on ``executor`` until ``end`` (a clock reading). ``emit`` journals an
    event and folds it into ``state``; ``clock`` reads the time; ``on_update`` shows progress."""

    def __init__(self, executor: Executor, state: SearchState, emit: Callable[[Event], None],
                 baselines: dict[str, Policy | None], recipes: list[str], skipped: dict[str, str], top_k: int,
                 seconds: tuple[float, float, float], clock: Callable[[], float],
                 on_update: Callable[[tuple[int, int]], None] = lambda progress: None):
        self.executor, self.state, self.emit, self.clock = executor, state, emit, clock
        self.baselines, self.recipes, self.skipped, self.top_k = baselines, recipes, skipped, top_k
        self.select_plain, self.select_update, self.report_cost = seconds
        self.on_update = on_update

    def run(self, base: Policy, end: float) -> Outcome:
        selected, reported = self.state.selected, self.state.reported
        ranked = best_candidates(list(self.state.scored.values()), max(self.top_k, VALIDATION_POOL),
                                 sequential_first=False)
        policies: dict = {e.id: e.policy for e in ranked}
        policies.update(self.baselines)
        # the best candidate, then the recipes (strongest first: the comparison must be complete), then
        # the rest of the top-k; the next best candidates after the reports, while time allows
        top = [e.id for e in ranked[:self.top_k]]
        first = top[:1] + [k for k in self.baselines if k != DENSE] + top[1:]
        later = [e.id for e in ranked[self.top_k:]]
        # the slowest job so far (worker seconds) of each kind: a report, or a selection by weight update
        # (an ADMM reconstruction costs more than none); until measured, the estimates
        slowest: dict[str, float] = {}

        def kind(job: ValidationJob) -> str:
            return "eval" if job.split == "eval" else f"select/{job.policy.update if job.policy else 'none'}"

        def cost(k: str) -> float:
            if k in slowest:
                return slowest[k]
            if k == "eval":
                return self.report_cost
            measured = [v for key, v in slowest.items() if key.startswith("select/") and key != "select/none"]
            return self.select_plain if k == "select/none" else max([self.select_update, *measured])

        def fits(job: ValidationJob, wanted: list) -> bool:
            """One more job fits in the time left; a selection also leaves time for its own report and
            those still due (the winner, each selected recipe, the dense model), so the evaluation data
            always sees what the selection chose."""
            left = end - self.clock()
            if job.split == "eval":
                return cost("eval") <= left
            due = sum(1 for k in wanted if k is not None and k not in reported) + 1
            return cost(kind(job)) + due * cost("eval") <= left

        def next_job(running: set) -> ValidationJob | None:
            recipes = {k: r for k, r in selected.items() if isinstance(k, str)}
            wanted = [self.winner(), *best_variants(recipes).values(), *([DENSE] if DENSE in self.baselines else [])]
            keys = ([(k, "select") for k in first if k not in selected]
                    + [(k, "eval") for k in wanted if k is not None and (k in selected or k == DENSE)
                       and k not in reported]
                    + [(k, "select") for k in later if k not in selected])
            jobs = [ValidationJob(k, policies[k], split) for k, split in dict.fromkeys(keys)
                    if (k, split) not in running]
            if jobs and not running and not selected:
                return jobs[0]  # something is always validated, however short the time
            return next((j for j in jobs if fits(j, wanted)), None)

        running: set = set()
        planned = len(first) + (len(self.recipes) + 2 if self.recipes else 1)  # selections, then reports
        self.on_update((len(selected) + len(reported), planned))
        while self.clock() < end:
            while self.executor.free > 0:
                job = next_job(running)
                if job is None:
                    break
                self.executor.submit(job)
                running.add((job.key, job.split))
            if not running:
                break
            for job, res in self.executor.wait(min(0.5, max(0.0, end - self.clock()))):
                running.discard((job.key, job.split))
                slowest[kind(job)] = max(slowest.get(kind(job), 0.0), res.seconds)
                self.emit(Reported(job.key, res) if job.split == "eval" else Selected(job.key, res))
                done = len(selected) + len(reported)
                self.on_update((done, max(planned, done)))
        if running:
            self.executor.abandon(replace=False)  # the search is over: no new workers
        return self.outcome(base, ranked, policies)

    def winner(self) -> int | str | None:
        """The lowest selection perplexity among candidates and recipes (the dense model aside)."""
        ok = {k: r for k, r in self.state.selected.items() if k != DENSE and r.error is None}
        return min(ok, key=lambda k: ok[k].perplexity) if ok else None

    def outcome(self, base: Policy, ranked: list[Evaluated], policies: dict) -> Outcome:
        selected, reported = self.state.selected, self.state.reported
        validated = [{"id": e.id, "policy": e.policy.to_dict(), "proxy_loss": e.result.loss,
                      **_row(selected[e.id]), "select_perplexity": selected[e.id].perplexity,
                      "eval_perplexity": reported[e.id].perplexity if e.id in reported else None}
                     for e in ranked if e.id in selected and selected[e.id].error is None]
        win = self.winner()
        if win is not None:
            by_id = {e.id: e for e in ranked}
            outcome = Outcome(policies[win], win if isinstance(win, int) else None,
                              by_id[win].result.loss if isinstance(win, int) else None,
                              reported[win].perplexity if win in reported else None, validated, [],
                              select_perplexity=selected[win].perplexity,
                              recipe=recipe(win) if isinstance(win, str) else None)
        elif ranked:  # stopped before any validation finished: the best by proxy
            best = ranked[0]
            outcome = Outcome(best.policy, best.id, best.result.loss, None, [], [])
        else:  # nothing finished (the budget went on start-up): the target with the default metric
            outcome = Outcome(base, None, None, None, [], [])
        outcome.baselines = report(self.recipes, self.baselines, self.skipped,
                                   {k: v for k, v in selected.items() if isinstance(k, str)}, reported,
                                   outcome.perplexity)
        return outcome


def _row(r: ValidationResult) -> dict:
    d = {k: v for k, v in asdict(r).items() if k != "error"}
    d["block_ratios"] = list(r.block_ratios)
    return d
