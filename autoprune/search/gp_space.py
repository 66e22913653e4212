"""The GP search space (``search_spaces/gp.yaml``): primitive set, tree limits, operator rates, seeds."""

from __future__ import annotations

from dataclasses import dataclass, field

from autoprune.errors import UserError
from autoprune.pruning.expression import BINARY, NAMED_FORMS, TERMINALS, UNARY, Expr, parse

SEEDS = NAMED_FORMS  # seed individuals by name: magnitude, wanda, ria, pruner-zero


@dataclass
class GPSpace:
    """The ``gp`` search space (``search_spaces/gp.yaml``); unknown keys are refused."""

    unary: list[str] = field(default_factory=lambda: list(UNARY))
    binary: list[str] = field(default_factory=lambda: list(BINARY))
    terminals: list[str] = field(default_factory=lambda: list(TERMINALS))
    constants: list[float] = field(default_factory=lambda: [0.5, 2.0])
    population: int = 40
    generations: int | None = None  # None: until the phase's deadline
    init_min_height: int = 1
    init_max_height: int = 3
    max_height: int = 5
    crossover: float = 0.7
    mutation: float = 0.3
    tournament: int = 4
    elitism: int = 2
    hall_of_fame: int = 5
    seeds: list[str] = field(default_factory=list)
    low_batches: int = 1
    promote: int = 1
    sequential: int = 1  # per generation, the best full-fidelity metrics not yet scored sequentially
    sequential_share: float = 0.15  # ... while the sequential rung has taken at most this share of evaluation time
    novelty_retries: int = 3  # times a child that repeats a known metric is mutated again

    def __post_init__(self) -> None:
        for name, allowed in (("unary", UNARY), ("binary", BINARY), ("terminals", TERMINALS)):
            bad = sorted(set(getattr(self, name)) - set(allowed))
            if bad:
                raise UserError(f"gp search space: unknown {name} {', '.join(bad)}")
        if not self.terminals or self.population < 2 or (self.generations is not None and self.generations < 1) or self.tournament < 1:
            raise UserError("gp search space: needs terminals, population >= 2, generations >= 1 (or null), tournament >= 1")
        if not 1 <= self.init_min_height + 1 <= self.init_max_height + 1 <= self.max_height + 1:
            raise UserError("gp search space: needs 0 <= init_min_height <= init_max_height <= max_height")
        if not (0 <= self.crossover <= 1 and 0 <= self.mutation <= 1):
            raise UserError("gp search space: crossover and mutation are probabilities")
        if self.sequential < 0 or not 0 < self.sequential_share <= 1:
            raise UserError("gp search space: needs sequential >= 0 and 0 < sequential_share <= 1")

    @classmethod
    def from_dict(cls, space: dict) -> "GPSpace":
        space = {k: v for k, v in (space or {}).items() if k != "strategy"}
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(space) - known)
        if bad:
            raise UserError(f"gp search space: unknown keys {', '.join(bad)}")
        return cls(**space)


def seed_expression(seed: str) -> Expr:
    return parse(SEEDS.get(seed, seed))
