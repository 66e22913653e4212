"""Evolutionary search over per-projection sparsity and the weight update (after EvoPress).

A candidate allocation is a count of pruned weights per linear (q, k, v, o, gate, up, down of
every block), summing exactly to round(S N). It starts by choosing the reconstruction: each
*arm*, a (mask, update) pair from the context's updates (the base metric's mask with every
update, and SparseGPT's own OBS mask with every real update), is scored once with the uniform
allocation, and the best arm is the one evolved. Then the parent is the best of uniform and the
warm starts (OWL, AlphaPruning), and every generation:
    1. ``offspring`` children of the parent, each with 1..``max_moves`` moves: a quantum of
       weights moved from one linear to another (exact to the target by construction);
    2. multi-step selection: all children on the first ``fidelities`` rung (few proxy batches),
       the best ``survivors[0]`` on the next, ..., and the last rung's best at full fidelity
       replaces the parent when its loss is lower (the parent competes: a (1 + lambda) strategy).
One-shot candidates with a weight update cost the reconstruction of the layers that changed
(the worker keeps each (layer, count) it has reconstructed: EvoPress's level database, filled
as the search visits it) and one forward pass.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from autoprune.config import need
from autoprune.errors import UserError
from autoprune.messages import ProxyResult, policy_key
from autoprune.pruning.policy import UPDATES, Policy
from autoprune.search.allocation_space import explicit_policy
from autoprune.search.base import Candidate, SearchContext, Strategy


@dataclass(frozen=True)
class EvoSpace:
    """``search_spaces/evo.yaml``; the defaults are the packaged file's (a test holds them equal)."""

    offspring: int = 16
    fidelities: tuple[int | None, ...] = (1, 4, None)  # proxy batches per selection rung (None: all)
    survivors: tuple[int, ...] = (4, 1)  # children promoted to each later rung
    max_moves: int = 3
    step: float = 0.05  # one move: this fraction of the smallest linear's weights
    bounds: tuple[float, float] = (0.0, 0.95)
    arms_only: bool = False  # choose the (mask, update) arm with the uniform allocation only
    generations: int | None = None  # None: until the phase's deadline

    def __post_init__(self) -> None:
        need(self.generations is None or self.generations >= 1, "generations must be a positive integer (or null)")
        need(self.offspring >= 1 and self.max_moves >= 1, "offspring and max_moves must be positive integers")
        need(len(self.fidelities) == len(self.survivors) + 1 and self.fidelities[-1] is None,
             "fidelities need one rung more than survivors, the last null (all batches)")
        need(all(s >= 1 for s in self.survivors) and list(self.survivors) == sorted(self.survivors, reverse=True)
             and all(s <= self.offspring for s in self.survivors), "survivors must be positive, non-increasing and at most offspring")
        need(all(f is None or f >= 1 for f in self.fidelities), "fidelities must be positive batch counts (null: all)")
        need(0 < self.step < 1 and 0 <= self.bounds[0] < self.bounds[1] < 1,
             "step must be in (0, 1) and bounds within [0, 1)")


def arms(base: Policy, updates: tuple[str, ...]) -> list[tuple[str, str]]:
    """The (mask, update) pairs to try: the base metric with each update, SparseGPT's mask with each real one."""
    out = [(base.metric, u) for u in updates if not (base.metric == "sparsegpt" and u == "none")]
    out += [("sparsegpt", u) for u in updates if u != "none" and base.metric != "sparsegpt"]
    return out


class EvoStrategy(Strategy):
    name = "evo"
    space_type = EvoSpace
    stackable = True

    def __init__(self, context: SearchContext, space: dict | EvoSpace):
        self.context = context
        self.config = self.read_space(space)
        unknown = [u for u in context.updates if u not in UPDATES]
        if unknown:
            raise UserError(f"unknown update {unknown[0]!r} (choose {', '.join(UPDATES)})")
        self.base = replace(context.base_policy, allocation="uniform", block_ratios=None, layer_ratios=None)
        self.names = [(b, n) for b, blk in enumerate(context.block_sizes) for n in blk]
        self.sizes = [context.block_sizes[b][n] for b, n in self.names]
        self.quantum = max(1, round(self.config.step * min(self.sizes)))
        self.rng = random.Random(context.seed)
        # selection rungs at or past the proxy's batches collapse onto the full fidelity
        rungs = [None if f is None or f >= context.max_batches else f for f in self.config.fidelities]
        keep = [i for i in range(len(rungs)) if i == 0 or rungs[i] != rungs[i - 1]]
        self.fidelities = tuple(rungs[i] for i in keep)
        self.survivors = tuple(self.config.survivors[i - 1] for i in keep[1:])
        self.arms = arms(self.base, context.updates or ("none",))
        self.arm_losses: dict[str, float] = {}  # "metric|update" -> full-fidelity loss
        self.arm: tuple[str, str] | None = None
        self.parent: tuple[list[int], float] | None = None  # (counts, full-fidelity loss)
        self.best_seen: tuple[dict, float] | None = None
        self.generation = 0
        self._stage = "arms"  # arms -> warm -> evolve (-> done)
        self._rung = 0
        self._queue: list[Candidate] = []
        self._waiting: dict[str, list[int] | None] = {}  # policy key -> counts (None: an arm)
        self._scored: list[tuple[list[int], float]] = []  # this rung's results

    # -- allocations ------------------------------------------------------------------
    def _policy(self, counts: list[int]) -> Policy:
        metric, update = self.arm
        layers, blocks = [], []
        it = iter(zip(counts, self.sizes))
        for blk in self.context.block_sizes:
            ratios = {}
            for name in blk:
                c, n = next(it)
                ratios[name] = c / n
            layers.append(ratios)
            blocks.append(sum(ratios[k] * n for k, n in blk.items()) / sum(blk.values()))
        return replace(self.base, metric=metric, update=update, allocation="explicit", block_ratios=tuple(blocks),
                       layer_ratios=layers)

    def counts_of(self, policy: Policy) -> list[int]:
        own = [dict(b) for b in policy.layer_ratios]
        return [round(own[b][n] * size) for (b, n), size in zip(self.names, self.sizes)]

    def _from_blocks(self, block_ratios) -> list[int]:
        raw = [[r] * len(blk) for r, blk in zip(block_ratios, self.context.block_sizes)]
        return self.counts_of(explicit_policy(self.base, raw, self.context.block_sizes, self.config.bounds))

    def _mutate(self, counts: list[int]) -> list[int]:
        lo, hi = self.config.bounds
        child = list(counts)
        for _ in range(self.rng.randint(1, self.config.max_moves)):
            for _ in range(20):  # a move that stays within bounds
                i, j = self.rng.sample(range(len(child)), 2)  # i loses more weights, j fewer
                if child[i] + self.quantum <= int(hi * self.sizes[i]) and child[j] - self.quantum >= lo * self.sizes[j]:
                    child[i] += self.quantum
                    child[j] -= self.quantum
                    break
        return child

    # -- the ask / tell loop ------------------------------------------------------------
    def _push(self, policy: Policy, counts: list[int] | None, batches: int | None) -> None:
        key = policy_key(policy.to_dict(), batches)
        if key not in self._waiting:
            self._waiting[key] = counts
            self._queue.append(Candidate(policy, batches, {"stage": self._stage, "generation": self.generation}))

    def _advance(self) -> None:
        """Build the next rung's candidates once the last rung's results are all in."""
        if self._stage == "arms" and not self.arm_losses:
            for metric, update in self.arms:
                self._push(replace(self.base, metric=metric, update=update), None, None)
            return
        if self._stage == "arms":
            best = min(self.arms, key=lambda a: self.arm_losses.get(f"{a[0]}|{a[1]}", float("inf")))
            self.arm = best
            if self.base.nm is not None or self.config.arms_only:
                self._stage = "done"  # N:M fixes every layer's ratio: the arm is the whole choice
                return
            self._stage = "warm"
            uniform = self._from_blocks([self.base.sparsity] * len(self.context.block_sizes))
            self.parent = (uniform, self.arm_losses.get(f"{best[0]}|{best[1]}", float("inf")))
            for ratios in self.context.warm_starts:
                try:
                    counts = self._from_blocks(ratios)
                except UserError:
                    continue
                self._push(self._policy(counts), counts, None)
            if self._queue:
                return
        if self._stage == "warm":
            self._stage, self._rung = "evolve", 0
            self._scored = []
        if self._stage != "evolve":
            return
        cfg = self.config
        if self._rung == 0 or not self._scored:
            self._rung = 0
            if cfg.generations is not None and self.generation >= cfg.generations:
                self._stage = "done"
                return
            self.generation += 1
            for _ in range(cfg.offspring):
                child = self._mutate(self.parent[0])
                self._push(self._policy(child), child, self.fidelities[0])
            self._rung = 1
            return
        ranked = sorted(self._scored, key=lambda s: s[1])
        self._scored = []
        if self._rung <= len(self.survivors):
            for counts, _ in ranked[:self.survivors[self._rung - 1]]:
                self._push(self._policy(counts), counts, self.fidelities[self._rung])
            self._rung += 1
            if self._queue:
                return
        self._rung = 0
        self._advance()

    def _finish_rung(self) -> None:
        """The last rung (full fidelity) is in: its best replaces the parent if better."""
        if self._stage == "evolve" and self._rung == len(self.survivors) + 1:
            for counts, loss in self._scored:
                if loss < self.parent[1]:
                    self.parent = (counts, loss)
            self._scored = []
            self._rung = 0

    def ask(self, n: int) -> list[Candidate]:
        if not self._queue and not self._waiting:
            self._advance()
        out, self._queue = self._queue[:n], self._queue[n:]
        return out

    def tell(self, candidate: Candidate, result: ProxyResult) -> None:
        p = candidate.policy
        loss = result.loss if result.ok else float("inf")
        key = policy_key(p.to_dict(), candidate.batches)
        counts = self._waiting.pop(key, None)
        if candidate.batches is None and (self.best_seen is None or loss < self.best_seen[1]):
            self.best_seen = (p.to_dict(), loss)
        if candidate.tag.get("stage") == "arms":
            self.arm_losses[f"{p.metric}|{p.update}"] = loss
        elif candidate.tag.get("stage") == "warm":
            if self.parent is not None and loss < self.parent[1]:
                self.parent = (self.counts_of(p), loss)
        elif counts is not None:
            self._scored.append((counts, loss))
        if not self._waiting and not self._queue:
            self._finish_rung()

    def best(self) -> tuple[Policy, float] | None:
        if self.best_seen is None or self.best_seen[1] == float("inf"):
            return None
        return Policy.from_dict(self.best_seen[0]), self.best_seen[1]

    def done(self) -> bool:
        return self._stage == "done" and not self._queue and not self._waiting

    def state_dict(self) -> dict:
        """Everything, the rung in flight included: its candidates are told after a resume (the
        driver runs again what it had asked), so the search continues where it stopped."""
        version, internal, gauss = self.rng.getstate()
        return {"arm_losses": {k: _finite(v) for k, v in self.arm_losses.items()},
                "arm": list(self.arm) if self.arm else None,
                "parent": [self.parent[0], _finite(self.parent[1])] if self.parent else None,
                "best_seen": [self.best_seen[0], _finite(self.best_seen[1])] if self.best_seen else None,
                "generation": self.generation, "stage": self._stage, "rung": self._rung,
                "queue": [{"policy": c.policy.to_dict(), "batches": c.batches, "tag": c.tag} for c in self._queue],
                "waiting": self._waiting, "scored": [[c, _finite(loss)] for c, loss in self._scored],
                "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict) -> None:
        self.arm_losses = {k: _loss(v) for k, v in state.get("arm_losses", {}).items()}
        self.arm = tuple(state["arm"]) if state.get("arm") else None
        self.parent = (list(state["parent"][0]), _loss(state["parent"][1])) if state.get("parent") else None
        self.best_seen = (state["best_seen"][0], _loss(state["best_seen"][1])) if state.get("best_seen") else None
        self.generation = int(state.get("generation", 0))
        self._stage = state.get("stage", "arms")
        if "rng" in state:
            v, internal, gauss = state["rng"]
            self.rng.setstate((v, tuple(internal), gauss))
        if "waiting" in state:
            self._rung = int(state["rung"])
            self._queue = [Candidate(Policy.from_dict(c["policy"]), c["batches"], c["tag"]) for c in state["queue"]]
            self._waiting = {k: None if v is None else list(v) for k, v in state["waiting"].items()}
            self._scored = [(list(c), _loss(loss)) for c, loss in state["scored"]]
            return
        # a state saved before rungs were kept: the generation in flight starts again
        self._stage = "evolve" if self._stage == "warm" and self.parent is not None else self._stage
        if self._stage == "arms" and len(self.arm_losses) < len(self.arms):
            self.arm_losses = {}  # the arms are asked again (answered from the search's cache)
        self._rung, self._queue, self._waiting, self._scored = 0, [], {}, []


def _finite(loss: float) -> float | None:
    """JSON has no infinity: a failed candidate's loss is stored as null."""
    return loss if loss != float("inf") else None


def _loss(stored) -> float:
    return float("inf") if stored is None else float(stored)
