"""The one interface every search strategy implements.

A strategy never touches the model: it proposes ``Candidate``s (a policy and the proxy fidelity
to score it at) and is told each one's ``ProxyResult``. Whoever drives it (a test, a benchmark,
the search runner with its executor) decides where and when candidates are evaluated.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from autoprune.messages import ProxyResult
from autoprune.pruning.policy import Policy


@dataclass(frozen=True)
class Candidate:
    policy: Policy
    batches: int | None = None  # proxy fidelity: the first N proxy batches (None: all of them)
    tag: dict = field(default_factory=dict, compare=False, hash=False)  # strategy bookkeeping
    sequential: bool = False  # prune by the sequential protocol instead of one-shot (ProxyEvaluator.evaluate)


@dataclass(frozen=True)
class SearchContext:
    """What a strategy may know of the problem, without the model itself."""

    base_policy: Policy  # the target (sparsity, pattern) and the parts this strategy does not search
    block_sizes: tuple[dict[str, int], ...]  # per block: linear name within the block -> weight count
    max_batches: int  # proxy batches at full fidelity
    seed: int
    run_dir: Path  # where the strategy keeps its own state (Optuna storage, checkpoints)
    # per-block ratios of baseline allocations (OWL, AlphaPruning) computed where the model is;
    # a strategy may start from them
    warm_starts: tuple[tuple[float, ...], ...] = ()
    updates: tuple[str, ...] = ("none",)  # weight updates a strategy may choose among
    # per-step rewards where the model is (rl_env.Damage: a BlockDamage beside the model, or a
    # RemoteDamage on a worker); None: a strategy that wants them gets final rewards only
    damage: object | None = field(default=None, compare=False)


Evaluate = Callable[[list[Candidate]], list[ProxyResult]]


class Strategy(ABC):
    """Constructed as ``Strategy(context, space)`` with ``space`` the parsed search-space YAML."""

    name: str
    space_type: type  # the frozen dataclass its space is read into (``read_space``)
    # True when asking for several candidates at once costs the search nothing (a GP generation,
    # random draws), so the scheduler may stack them into one forward pass; a sequential
    # optimiser (BO, RL) should see each result before it proposes again
    stackable: bool = False

    @classmethod
    def read_space(cls, space: dict | object) -> object:
        """The strategy's space from the spec's mapping (an instance passes as it is): unknown keys,
        wrong types and out-of-range values are one-line ``UserError``s naming the file."""
        from autoprune.config import read

        return read(cls.space_type, space, f"{cls.name}.yaml")

    @abstractmethod
    def ask(self, n: int) -> list[Candidate]:
        """Up to ``n`` candidates to evaluate now (fewer, or none, when the strategy must wait)."""

    @abstractmethod
    def tell(self, candidate: Candidate, result: ProxyResult) -> None:
        """The result of a candidate this strategy proposed."""

    @abstractmethod
    def best(self) -> tuple[Policy, float] | None:
        """The best policy found so far and its proxy loss."""

    def done(self) -> bool:
        """True when the strategy has nothing more to propose."""
        return False

    def state_dict(self) -> dict:
        """JSON-serialisable state to resume from (empty: the strategy restarts)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Resume from ``state_dict()`` output."""


def run_serial(strategy: Strategy, evaluate: Evaluate, max_candidates: int, batch: int = 1) -> int:
    """Drive ``strategy`` in this process until it is done or ``max_candidates`` were evaluated."""
    evaluated = 0
    while evaluated < max_candidates and not strategy.done():
        cands = strategy.ask(min(batch, max_candidates - evaluated))
        if not cands:
            break
        for cand, res in zip(cands, evaluate(cands)):
            strategy.tell(cand, res)
        evaluated += len(cands)
    return evaluated
