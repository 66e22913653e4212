"""The GP search space (``search_spaces/gp.yaml``): primitive set, tree limits, operator rates, seeds.

The defaults are the packaged file's (a test holds them equal)."""

from __future__ import annotations

from dataclasses import dataclass

from autoprune.config import need
from autoprune.pruning.expression import BINARY, NAMED_FORMS, TERMINALS, UNARY, Expr, parse

SEEDS = NAMED_FORMS  # seed individuals by name: magnitude, wanda, ria, pruner-zero


@dataclass(frozen=True)
class GPSpace:
    unary: tuple[str, ...] = UNARY
    binary: tuple[str, ...] = BINARY
    terminals: tuple[str, ...] = TERMINALS
    constants: tuple[float, ...] = (0.5, 2.0)
    population: int = 64
    generations: int | None = None  # None: until the phase's deadline
    init_min_height: int = 1
    init_max_height: int = 3
    max_height: int = 5
    crossover: float = 0.7
    mutation: float = 0.3
    tournament: int = 3
    elitism: int = 2
    hall_of_fame: int = 5
    seeds: tuple[str, ...] = ()
    low_batches: int = 1
    promote: int = 1
    sequential: int = 1  # per generation, the best full-fidelity metrics not yet scored sequentially
    sequential_share: float = 0.15  # ... while the sequential rung has taken at most this share of evaluation time
    novelty_retries: int = 3  # times a child that repeats a known metric is mutated again

    def __post_init__(self) -> None:
        for name, allowed in (("unary", UNARY), ("binary", BINARY), ("terminals", TERMINALS)):
            bad = sorted(set(getattr(self, name)) - set(allowed))
            need(not bad, f"unknown {name} {', '.join(bad)} (choose from {', '.join(allowed)})")
        need(len(self.terminals) > 0, "terminals must not be empty")
        need(self.population >= 2, f"population must be >= 2, got {self.population}")
        need(self.generations is None or self.generations >= 1, "generations must be >= 1 (or null)")
        need(self.tournament >= 1, "tournament must be >= 1")
        need(0 <= self.init_min_height <= self.init_max_height <= self.max_height,
             "needs 0 <= init_min_height <= init_max_height <= max_height")
        need(0 <= self.crossover <= 1 and 0 <= self.mutation <= 1, "crossover and mutation are probabilities")
        need(self.sequential >= 0 and 0 < self.sequential_share <= 1,
             "needs sequential >= 0 and 0 < sequential_share <= 1")
        need(min(self.elitism, self.hall_of_fame, self.novelty_retries, self.promote) >= 0
             and self.low_batches >= 1, "elitism, hall_of_fame, novelty_retries, promote >= 0 and low_batches >= 1")


def seed_expression(seed: str) -> Expr:
    return parse(SEEDS.get(seed, seed))
