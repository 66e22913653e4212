"""Random search, the baseline every other strategy must beat.

In the ``metric`` phase it draws, without repetition, from the grid of the named metrics in
the space times the allocations (uniform, and OWL at each listed lambda). In the ``allocation``
phase it keeps the context's metric and draws explicit block ratios: the target plus a uniform
perturbation of at most ``spread``, recentred so the weight-count-weighted mean is the target,
then projected onto the target to the weight (``allocation_space.explicit_policy``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Literal

from autoprune.config import need
from autoprune.messages import ProxyResult
from autoprune.pruning.policy import Policy
from autoprune.search.allocation_space import explicit_policy
from autoprune.search.base import Candidate, SearchContext, Strategy



@dataclass(frozen=True)
class RandomSpace:
    """``search_spaces/random.yaml`` plus the phase the search runs it in; the defaults are the file's."""

    phase: Literal["metric", "allocation"] = "metric"
    metrics: tuple[str, ...] = ("magnitude", "wanda", "ria")
    owl_lambdas: tuple[float, ...] = (0.04, 0.08, 0.12, 0.16)
    spread: float = 0.15
    draws: int | None = None  # candidates at most; None: the metric grid, or until the allocation phase's deadline

    def __post_init__(self) -> None:
        need(self.draws is None or self.draws >= 1, "draws must be a positive integer (or null)")
        need(len(self.metrics) > 0, "metrics must not be empty")
        need(all(0 < lam < 1 for lam in self.owl_lambdas), "owl_lambdas must be in (0, 1)")
        need(0 <= self.spread < 1, f"spread must be in [0, 1), got {self.spread:g}")


def balanced_ratios(target: float, offsets: list[float], weights: list[int], lo: float = 0.0,
                    hi: float = 0.99) -> list[float]:
    """target + offsets, clipped to [lo, hi] and shifted until the weighted mean is ``target``."""
    total = float(sum(weights))
    r = [min(hi, max(lo, target + o)) for o in offsets]
    for _ in range(50):
        err = target - sum(ri * w for ri, w in zip(r, weights)) / total
        if abs(err) < 1e-9:
            break
        r = [min(hi, max(lo, ri + err)) for ri in r]
    return r


class RandomStrategy(Strategy):
    name = "random"
    space_type = RandomSpace
    stackable = True

    def __init__(self, context: SearchContext, space: dict | RandomSpace):
        self.context = context
        self.space = self.read_space(space)
        self.phase = self.space.phase
        self.rng = random.Random(context.seed)
        self.weights = [sum(b.values()) for b in context.block_sizes]
        self.results: list[tuple[dict, float]] = []  # (policy dict, loss) of every told candidate
        self.proposed: set[str] = set()
        self.grid = self._grid() if self.phase == "metric" else []

    def _grid(self) -> list[Policy]:
        base = self.context.base_policy
        out = []
        for metric in self.space.metrics:
            out.append(replace(base, metric=metric, allocation="uniform", block_ratios=None, update="none"))
            if base.nm is None:
                out += [replace(base, metric=metric, allocation="owl", owl_lambda=float(lam), block_ratios=None,
                                update="none") for lam in self.space.owl_lambdas]
        return out

    def _next(self) -> Policy | None:
        if self.space.draws is not None and len(self.proposed) >= self.space.draws:
            return None
        if self.phase == "metric":
            left = [p for p in self.grid if _key(p) not in self.proposed]
            return self.rng.choice(left) if left else None
        base = self.context.base_policy
        if base.nm is not None:
            return None  # an N:M pattern fixes every block's ratio
        spread = self.space.spread
        offsets = [self.rng.uniform(-spread, spread) for _ in self.weights]
        ratios = balanced_ratios(base.sparsity, offsets, self.weights)
        raw = [[r] * len(blk) for r, blk in zip(ratios, self.context.block_sizes)]  # then exact to the weight
        return explicit_policy(base, raw, self.context.block_sizes, (0.0, 0.99))

    def ask(self, n: int) -> list[Candidate]:
        out = []
        for _ in range(n):
            policy = self._next()
            if policy is None:
                break
            self.proposed.add(_key(policy))
            out.append(Candidate(policy))
        return out

    def tell(self, candidate: Candidate, result: ProxyResult) -> None:
        self.proposed.add(_key(candidate.policy))
        self.results.append((candidate.policy.to_dict(), result.loss if result.ok else float("inf")))

    def best(self) -> tuple[Policy, float] | None:
        ok = [r for r in self.results if r[1] != float("inf")]
        if not ok:
            return None
        d, loss = min(ok, key=lambda r: r[1])
        return Policy.from_dict(d), loss

    def done(self) -> bool:
        if self.space.draws is not None and len(self.proposed) >= self.space.draws:
            return True
        if self.phase == "metric":
            return all(_key(p) in self.proposed for p in self.grid)
        return self.context.base_policy.nm is not None

    def state_dict(self) -> dict:
        results = [(d, None if loss == float("inf") else loss) for d, loss in self.results]  # JSON has no inf
        return {"results": results, "proposed": sorted(self.proposed), "rng": _rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        self.results = [(d, float("inf") if loss is None else float(loss)) for d, loss in state.get("results", [])]
        self.proposed = set(state.get("proposed", []))
        if "rng" in state:
            self.rng.setstate((state["rng"][0], tuple(state["rng"][1]), state["rng"][2]))


def _key(policy: Policy) -> str:
    d = policy.to_dict()
    d.pop("meta", None)
    return repr(sorted(d.items()))


def _rng_state(rng: random.Random) -> list:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]
