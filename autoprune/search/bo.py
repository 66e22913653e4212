"""Bayesian optimisation of the layer-wise allocation: an Optuna study driven by ask/tell.

Each trial samples a point of an allocation space (``search_spaces/allocation.yaml``), decoded and
projected onto the exact global target. It is scored at increasing proxy fidelities (the first
``fidelities[k]`` proxy batches); after every rung but the last, Optuna's percentile pruner
stops trials that are worse than most others were at that rung.

The study lives in Optuna storage (default ``sqlite:///<run_dir>/optuna.db``, any database URL)
under a name derived from the problem, so a restarted search resumes it: completed and pruned
trials are kept. Trials in flight when the process stopped are adopted again when the driver
restores ``state_dict()`` (it then delivers their results); any other trial left running is
failed and its point queued again. ``BOSpaces`` runs one such study per space of a list.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal

from autoprune.config import need, read
from autoprune.errors import UserError
from autoprune.messages import ProxyResult
from autoprune.pruning.policy import Policy
from autoprune.search.allocation_space import AllocationSpace, load_space
from autoprune.search.base import Candidate, SearchContext, Strategy



def _allocations(value) -> tuple[AllocationSpace, ...]:
    """``allocation``: a space's name in ``allocation.yaml``, an inline mapping, or a list of them."""
    given = [value] if isinstance(value, (str, dict, AllocationSpace)) else value
    if not isinstance(given, (list, tuple)) or not given:
        raise UserError("bo.yaml: allocation must be a space name, a mapping, or a list of distinct names")
    spaces = tuple(s if isinstance(s, AllocationSpace) else load_space(s) for s in given)
    if len({s.name for s in spaces}) != len(spaces):
        raise UserError("bo.yaml: allocation must be a space name, a mapping, or a list of distinct names")
    return spaces


@dataclass(frozen=True)
class BOSpace:
    """``search_spaces/bo.yaml``; the defaults are the packaged file's (a test holds them equal)."""

    allocation: tuple[AllocationSpace, ...] = field(
        default=(AllocationSpace("per_block", "per_block"), AllocationSpace("attn_mlp", "attn_mlp", per_block=True)),
        metadata={"read": _allocations})  # one study each
    sampler: Literal["tpe", "gp"] = "tpe"
    n_trials: int | None = None  # per space; None: until the phase's deadline
    n_startup_trials: int = 10
    storage: str | None = None  # None: sqlite:///<run dir>/optuna.db
    study_name: str | None = None
    fidelities: tuple[int | None, ...] = (4, None)  # proxy batches per rung, increasing (None: all); () = all only
    prune_percentile: float = 50.0
    seed_baselines: bool = True  # first trials: uniform (or OWL's defaults), then the context's warm starts

    def __post_init__(self) -> None:
        need(self.n_trials is None or self.n_trials >= 1, "n_trials must be a positive integer (or null)")
        need(self.n_startup_trials >= 0, "n_startup_trials must be a non-negative integer")
        given = [f for f in self.fidelities if f is not None]
        need(all(f > 0 for f in given) and given == sorted(set(given)) and None not in self.fidelities[:-1],
             "fidelities must be increasing positive batch counts (null: all)")
        need(0 < self.prune_percentile < 100, "prune_percentile must be in (0, 100)")

    def rungs(self, max_batches: int) -> tuple[int, ...]:
        """Proxy batches per rung; rungs beyond the proxy's batches collapse onto the full fidelity."""
        return tuple(sorted({max_batches if f is None else min(f, max_batches) for f in self.fidelities})) or (max_batches,)


class BOStrategy(Strategy):
    name = "bo"

    def __init__(self, context: SearchContext, space: dict | BOSpace):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.context = context
        self.config = cfg = read(BOSpace, space, "bo.yaml")
        if len(cfg.allocation) != 1:
            raise UserError("bo.yaml: one BOStrategy studies one allocation space (BOSpaces runs several)")
        self.allocation = cfg.allocation[0]
        self.rungs = cfg.rungs(context.max_batches)
        self.params = self.allocation.params(len(context.block_sizes))
        context.run_dir.mkdir(parents=True, exist_ok=True)
        self.storage = cfg.storage or f"sqlite:///{context.run_dir / 'optuna.db'}"
        base = context.base_policy
        self.study_name = cfg.study_name or (f"allocation-{self.allocation.name}-{base.metric}-{base.update}"
                                             f"-s{base.sparsity:g}-seed{context.seed}")
        kind = optuna.samplers.GPSampler if cfg.sampler == "gp" else optuna.samplers.TPESampler
        sampler = kind(seed=context.seed, n_startup_trials=cfg.n_startup_trials)
        pruner = optuna.pruners.PercentilePruner(cfg.prune_percentile, n_startup_trials=cfg.n_startup_trials)
        from sqlalchemy.exc import SQLAlchemyError

        try:
            self.study = optuna.create_study(study_name=self.study_name, storage=self.storage, sampler=sampler,
                                             pruner=pruner, direction="minimize", load_if_exists=True)
        except (ValueError, ImportError, SQLAlchemyError) as e:
            raise UserError(f"cannot open Optuna storage {self.storage}: {e}") from None
        self._trials: dict[int, object] = {}  # trial number -> optuna Trial in flight
        self._promoted: deque[Candidate] = deque()
        self._checked = False  # stale trials are dealt with at the first ask, after load_state_dict

    def _requeue_stale(self) -> None:
        """Trials left running by a stopped process (and not adopted) are failed and queued again."""
        from optuna.trial import TrialState

        stale = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for t in stale:
            if t.number not in self._trials:
                self.study.enqueue_trial(t.params, skip_if_exists=False)
                self.study.tell(t.number, state=TrialState.FAIL)
        if not self.study.trials and self.config.seed_baselines:
            for point in self._baseline_points():
                self.study.enqueue_trial(point)

    def _adopt(self, number: int):
        """The live Trial of a stored running trial (None when it is finished)."""
        import optuna
        from optuna.trial import TrialState

        if number not in self._trials:
            frozen = next((t for t in self.study.get_trials(deepcopy=False) if t.number == number), None)
            if frozen is None or frozen.state != TrialState.RUNNING:
                return None
            self._trials[number] = optuna.trial.Trial(self.study, frozen._trial_id)
        return self._trials[number]

    def _baseline_points(self) -> list[dict[str, float]]:
        """The first trials: uniform (OWL's defaults for the owl space), then the context's warm
        starts (OWL, AlphaPruning ratios) where the space can express them."""
        space = self.allocation
        if space.kind == "owl":
            return [{p.name: min(max(v, p.low), p.high) for p, v in zip(self.params, (0.08, 5.0))}]
        points = [{p.name: 0.0 for p in self.params}]
        for ratios in self.context.warm_starts:
            point = space.encode(list(ratios), self.context.base_policy.sparsity)
            if point is not None and point not in points:
                points.append(point)
        return points

    def finished(self) -> int:
        """Trials completed or pruned so far, this process and earlier ones."""
        from optuna.trial import TrialState

        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def _candidate(self, trial, rung: int) -> Candidate:
        policy = self.allocation.decode(trial.params, self.context.base_policy, self.context.block_sizes)
        return Candidate(policy, self.rungs[rung], {"trial": trial.number, "rung": rung})

    def ask(self, n: int) -> list[Candidate]:
        if not self._checked:
            self._requeue_stale()
            self._checked = True
        out = []
        while self._promoted and len(out) < n:
            out.append(self._promoted.popleft())
        room = n if self.config.n_trials is None else self.config.n_trials - self.finished() - len(self._trials)
        while len(out) < n and room > 0:
            trial = self.study.ask()
            for p in self.params:
                trial.suggest_float(p.name, p.low, p.high)
            self._trials[trial.number] = trial
            out.append(self._candidate(trial, 0))
            room -= 1
        return out

    def tell(self, candidate: Candidate, result: ProxyResult) -> None:
        from optuna.trial import TrialState

        number, rung = candidate.tag["trial"], candidate.tag["rung"]
        trial = self._adopt(number)
        if trial is None:
            return  # a result for a trial already finished (a replay after a restart)
        if not result.ok:
            del self._trials[number]
            trial.set_user_attr("error", result.error or "non-finite loss")
            self.study.tell(trial, state=TrialState.FAIL)
            return
        trial.report(result.loss, step=candidate.batches)
        if rung + 1 < len(self.rungs) and trial.should_prune():
            del self._trials[number]
            self.study.tell(trial, state=TrialState.PRUNED)
        elif rung + 1 < len(self.rungs):
            self._promoted.append(self._candidate(trial, rung + 1))
        else:
            del self._trials[number]
            trial.set_user_attr("policy", candidate.policy.to_dict())
            trial.set_user_attr("sparsity", result.sparsity)
            self.study.tell(trial, result.loss)

    def done(self) -> bool:
        if self.config.n_trials is None:
            return False
        return not self._trials and not self._promoted and self.finished() >= self.config.n_trials

    def best(self) -> tuple[Policy, float] | None:
        from optuna.trial import TrialState

        done = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not done:
            return None
        t = min(done, key=lambda t: t.value)
        return Policy.from_dict(t.user_attrs["policy"]), float(t.value)

    def state_dict(self) -> dict:
        """Trials in flight, promotions not yet asked and the sampler's random streams; everything
        else lives in the study."""
        promoted = [[c.tag["trial"], c.tag["rung"]] for c in self._promoted]
        inflight = sorted(set(self._trials) - {t for t, _ in promoted})
        rngs = [[name, keys.tolist(), pos, gauss, cached] for name, keys, pos, gauss, cached
                in (r.get_state() for r in _sampler_rngs(self.study.sampler))]
        return {"study_name": self.study_name, "inflight": inflight, "promoted": promoted, "rngs": rngs}

    def load_state_dict(self, state: dict) -> None:
        import numpy as np

        for rng, (name, keys, pos, gauss, cached) in zip(_sampler_rngs(self.study.sampler), state.get("rngs", [])):
            rng.set_state((name, np.asarray(keys, dtype=np.uint32), pos, gauss, cached))
        for number in state.get("inflight", []):
            self._adopt(number)
        for number, rung in state.get("promoted", []):
            trial = self._adopt(number)
            if trial is not None:
                self._promoted.append(self._candidate(trial, rung))


def _sampler_rngs(sampler) -> list:
    """The sampler's random streams (numpy RandomStates): its own and its start-up sampler's."""
    parts = (sampler, getattr(sampler, "_random_sampler", None), getattr(sampler, "_independent_sampler", None))
    return [p._rng.rng for p in parts if p is not None and hasattr(getattr(p, "_rng", None), "rng")]


class BOSpaces(Strategy):
    """BO over several allocation spaces (``allocation: [per_block, attn_mlp]``): one study per
    space, in ``<run_dir>/<space>``, asked in turn. Their candidates compete by proxy loss, and the
    search's final validation picks among them: a space that overfits the proxy at one target
    (attn_mlp at 70% on stories260K) is outranked by one that does not."""

    name = "bo"
    space_type = BOSpace

    def __init__(self, context: SearchContext, space: dict | BOSpace):
        space = self.read_space(space)
        several = len(space.allocation) > 1
        self.parts: dict[str, BOStrategy] = {}
        fixed = context.base_policy.nm is not None  # an N:M pattern fixes every ratio: no study, done at once
        for alloc in () if fixed else space.allocation:
            name = f"{space.study_name}-{alloc.name}" if several and space.study_name else space.study_name
            run_dir = context.run_dir / alloc.name if several else context.run_dir
            self.parts[alloc.name] = BOStrategy(replace(context, run_dir=run_dir),
                                                replace(space, allocation=(alloc,), study_name=name))
        self._turn = 0

    def ask(self, n: int) -> list[Candidate]:
        out, order = [], list(self.parts)
        for k in range(len(order)):
            if len(out) >= n:
                break
            name = order[(self._turn + k) % len(order)]
            out += [replace(c, tag={**c.tag, "space": name}) for c in self.parts[name].ask(n - len(out))]
        self._turn += 1
        return out

    def tell(self, candidate: Candidate, result: ProxyResult) -> None:
        part = self.parts.get(candidate.tag.get("space", next(iter(self.parts))))
        if part is not None:
            part.tell(candidate, result)  # a study reads its own keys of the tag

    def done(self) -> bool:
        return all(p.done() for p in self.parts.values())

    def best(self) -> tuple[Policy, float] | None:
        found = [b for b in (p.best() for p in self.parts.values()) if b is not None]
        return min(found, key=lambda b: b[1]) if found else None

    def state_dict(self) -> dict:
        return {**{name: p.state_dict() for name, p in self.parts.items()}, "turn": self._turn}

    def load_state_dict(self, state: dict) -> None:
        self._turn = int(state.get("turn", 0))
        for name, p in self.parts.items():
            if isinstance(state.get(name), dict):
                p.load_state_dict(state[name])
