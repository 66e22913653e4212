"""Genetic programming over symbolic pruning metrics (DEAP), as Pruner-Zero, with its missing parts:
simplification before evaluation, a rank-equivalence fitness cache, and multi-fidelity promotion.

Each generation: tournament selection, subtree crossover, node or subtree mutation, a static
height limit, elitism. Every individual is simplified; its fitness is the proxy loss of its
``rank_form`` at low fidelity (the first ``low_batches`` proxy batches), looked up in a cache keyed
by ``rank_key``, so equivalent candidates are evaluated once. Degenerate ones (scores constant
within every row) get the worst fitness without evaluation. After each generation the best
``promote`` new keys are re-scored at full fidelity, then the best ``sequential`` full-fidelity
keys not yet so scored are pruned by the sequential protocol and scored again (fidelity "seq"),
as long as that rung has taken at most ``sequential_share`` of the evaluation time (it costs
about as much as the naive protocol's pruning, so it is rationed).

Why the last rung: one-shot pruning misranks metrics that read G against the sequential
protocol that ``autoprune prune`` applies. On stories260K at 50%, one-shot KL puts Wanda (1.572)
and |W| sqrt(X G) (1.563) level; sequentially pruned they score 1.550 and 1.508, and held-out
perplexity agrees (23.49 and 23.17). The hall of fame ranks by the sequential score (one entry
per distinct set of masks, its shortest expression), and the best metric so far by that score
stays in the population as an elite, so its offspring keep being explored.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from functools import lru_cache

from autoprune.errors import UserError
from autoprune.messages import ProxyResult
from autoprune.pruning.expression import TERMINALS, Expr, call, const, parse
from autoprune.pruning.policy import Policy
from autoprune.pruning.simplify import is_degenerate, rank_form, simplify
from autoprune.search.base import Candidate, SearchContext, Strategy
from autoprune.search.gp_space import GPSpace, seed_expression


@lru_cache(maxsize=None)
def _deap():
    """DEAP modules and our tree type, made once (imported lazily: the CLI stays fast)."""
    from deap import base, gp, tools

    class Fitness(base.Fitness):
        weights = (-1.0,)  # minimise the proxy loss

    class Individual(gp.PrimitiveTree):
        def __init__(self, content):
            super().__init__(content)
            self.fitness = Fitness()

    return gp, base, tools, Individual


def _no_op(*args):  # DEAP needs a callable per primitive; trees are never compiled by DEAP
    raise NotImplementedError


class GPStrategy(Strategy):
    name = "gp"
    space_type = GPSpace
    stackable = True

    @classmethod
    def read_space(cls, space: dict | GPSpace) -> GPSpace:
        if isinstance(space, dict) and space.get("strategy") == "gp":  # a key of specs stored before it was dropped
            space = {k: v for k, v in space.items() if k != "strategy"}
        return super().read_space(space)

    def __init__(self, context: SearchContext, space: dict | GPSpace):
        self.context = context
        self.space = self.read_space(space)
        gp, base, tools, Individual = _deap()
        self._gp, self._Individual = gp, Individual
        s = self.space
        pset = gp.PrimitiveSet("metric", 0)
        for op in s.unary:
            pset.addPrimitive(_no_op, 1, name=op)
        for op in s.binary:
            pset.addPrimitive(_no_op, 2, name=op)
        for t in s.terminals:
            pset.addTerminal(t, name=t)
        for c in s.constants:
            pset.addTerminal(float(c))
        self.pset = pset
        tb = base.Toolbox()
        tb.register("expr", gp.genHalfAndHalf, pset=pset, min_=s.init_min_height, max_=s.init_max_height)
        tb.register("select", tools.selTournament, tournsize=s.tournament)
        tb.register("mate", gp.cxOnePoint)
        tb.register("sub_tree", gp.genGrow, min_=0, max_=2)
        tb.register("mutate_subtree", gp.mutUniform, expr=tb.sub_tree, pset=pset)
        tb.register("mutate_node", gp.mutNodeReplacement, pset=pset)
        limit = gp.staticLimit(key=lambda ind: ind.height, max_value=s.max_height)
        for op in ("mate", "mutate_subtree", "mutate_node"):
            tb.decorate(op, limit)
        self.tb = tb
        self._rng = random.Random(context.seed)
        self.generation = 0
        self.population: list[Expr] = []
        self.low: dict[str, float] = {}  # rank key -> low-fidelity proxy loss
        self.high: dict[str, float] = {}  # rank key -> full-fidelity proxy loss
        self.seq: dict[str, float] = {}  # rank key -> full-fidelity proxy loss under the sequential protocol
        self.masks: dict[str, str] = {}  # rank key -> digest of its full-fidelity one-shot masks
        self.seconds = {"low": 0.0, "high": 0.0, "seq": 0.0}  # evaluation time per fidelity
        self.counts = {"proposed": 0, "evaluated": 0, "cache_hits": 0, "degenerate": 0, "mask_hits": 0, "promoted": 0,
                       "remutated": 0}
        self.history: list[dict] = []  # per evaluation: key, fidelity, loss, candidates proposed so far
        self._queue: list[tuple[str, str]] = []  # (key, fidelity) to ask
        self._inflight: set[tuple[str, str]] = set()
        self._stage = "score"
        seeds = [seed_expression(x) for x in s.seeds]
        for x, e in zip(s.seeds, seeds):
            missing = {n.op for n in _nodes(e)} - set(pset.mapping) - {"const"}
            if missing:
                raise UserError(f"gp seed {x!r} uses {', '.join(sorted(missing))}, not in the primitive set")
        self._start(seeds + self.random_trees(s.population - len(seeds)))

    # --- trees <-> DEAP ---------------------------------------------------------------------
    def _to_deap(self, e: Expr):
        nodes = []

        def walk(x: Expr) -> None:
            if x.op == "const":
                nodes.append(self._gp.Terminal(x.value, False, object))
            else:
                nodes.append(self.pset.mapping[x.op])
            for a in x.args:
                walk(a)

        walk(e)
        return self._Individual(nodes)

    def _from_deap(self, tree) -> Expr:
        stack: list[tuple[object, list[Expr]]] = []
        for node in tree:
            stack.append((node, []))
            while stack and len(stack[-1][1]) == stack[-1][0].arity:
                node, args = stack.pop()
                if isinstance(node, self._gp.Primitive):
                    e = call(node.name, *args)
                elif node.name in TERMINALS:
                    e = Expr(node.name)
                else:
                    e = const(float(node.value))
                if not stack:
                    return e
                stack[-1][1].append(e)
        raise ValueError("incomplete tree")

    def _with_rng(self, fn, *args):
        """Run a DEAP operator with this strategy's own random stream (DEAP uses ``random``)."""
        outer = random.getstate()
        random.setstate(self._rng.getstate())
        try:
            return fn(*args)
        finally:
            self._rng.setstate(random.getstate())
            random.setstate(outer)

    def random_trees(self, n: int) -> list[Expr]:
        """``n`` ramped half-and-half trees from the primitive set (this strategy's random stream)."""
        return [self._from_deap(self._with_rng(self.tb.expr)) for _ in range(max(n, 0))]

    # --- generations ------------------------------------------------------------------------
    def _start(self, population: list[Expr]) -> None:
        """Simplify a new generation and queue the keys that need a proxy evaluation."""
        self.population = [simplify(e) for e in population]
        self._stage = "score"
        seen = set()
        for e in self.population:
            self.counts["proposed"] += 1
            key = str(rank_form(e))
            if key in self.low or key in seen:
                self.counts["cache_hits"] += 1
            elif is_degenerate(e):
                self.counts["degenerate"] += 1
                self.low[key] = math.inf
            else:
                seen.add(key)
                self._queue.append((key, "low"))
        if self.generation == 0:  # metrics that read only W and X first: a worker collects G and the
            # Hessians when a candidate first needs them, so the search starts scoring at once
            self._queue.sort(key=lambda item: len(parse(item[0]).terminals - {"W", "X"}) > 0)

    def fitness(self, e: Expr) -> float:
        return self.low.get(str(rank_form(e)), math.inf)

    def _promote(self) -> None:
        self._stage = "promote"
        keys = sorted({str(rank_form(e)) for e in self.population}, key=lambda k: self.low.get(k, math.inf))
        fresh = [k for k in keys if k not in self.high and math.isfinite(self.low.get(k, math.inf))]
        for k in fresh[: self.space.promote]:
            self._queue.append((k, "high"))
            self.counts["promoted"] += 1

    def _sequential(self) -> None:
        self._stage = "sequential"
        if self.seconds["seq"] > self.space.sequential_share * sum(self.seconds.values()):
            return
        fresh = [k for k in sorted(self.high, key=self.high.get) if k not in self.seq and math.isfinite(self.high[k])]
        for k in fresh[: self.space.sequential]:
            self._queue.append((k, "seq"))

    def _breed(self) -> None:
        s = self.space
        self.generation += 1
        pop = []
        for e in self.population:
            ind = self._to_deap(e)
            ind.fitness.values = (self.fitness(e),)
            pop.append(ind)
        pop.sort(key=lambda ind: ind.fitness.values[0])
        elite = [self._from_deap(ind) for ind in pop[: s.elitism]]
        best_seq = self._best_key(self.seq)
        if best_seq is not None and s.elitism > 0 and best_seq not in {str(rank_form(e)) for e in elite}:
            elite[-1] = parse(best_seq)
        chosen = self._with_rng(self.tb.select, pop, s.population - len(elite))
        offspring = [self._to_deap(self._from_deap(c)) for c in chosen]  # independent copies
        for i in range(1, len(offspring), 2):
            if self._rng.random() < s.crossover:
                offspring[i - 1], offspring[i] = self._with_rng(self.tb.mate, offspring[i - 1], offspring[i])
        known = {str(rank_form(e)) for e in elite} | set(self.low)
        for i, child in enumerate(offspring):
            if self._rng.random() < s.mutation:
                child = self._mutate(child)
            for _ in range(s.novelty_retries):  # a known metric is mutated again, to keep the search exploring
                key = str(rank_form(self._from_deap(child)))
                if key not in known:
                    break
                self.counts["remutated"] += 1
                child = self._mutate(child)
            known.add(str(rank_form(self._from_deap(child))))
            offspring[i] = child
        self._start(elite + [self._from_deap(c) for c in offspring])

    def _mutate(self, child):
        op = self.tb.mutate_subtree if self._rng.random() < 0.5 else self.tb.mutate_node
        return self._with_rng(op, self._to_deap(self._from_deap(child)))[0]

    def _advance(self) -> None:
        while not self._queue and not self._inflight and not self.done():
            if self._stage == "score":
                self._promote()
            elif self._stage == "promote" and self.space.sequential > 0:
                self._sequential()
            else:
                self._breed()

    # --- Strategy interface -----------------------------------------------------------------
    def ask(self, n: int) -> list[Candidate]:
        self._advance()
        out = []
        while self._queue and len(out) < n:
            key, fid = self._queue.pop(0)
            self._inflight.add((key, fid))
            batches = min(self.space.low_batches, self.context.max_batches) if fid == "low" else None
            policy = replace(self.context.base_policy, metric=key)
            out.append(Candidate(policy, batches, {"key": key, "fidelity": fid}, sequential=fid == "seq"))
        return out

    def tell(self, candidate: Candidate, result: ProxyResult) -> None:
        key, fid = candidate.tag["key"], candidate.tag["fidelity"]
        self._inflight.discard((key, fid))
        loss = result.loss if result.ok else math.inf
        {"low": self.low, "high": self.high, "seq": self.seq}[fid][key] = loss
        self.seconds[fid] += result.seconds
        if fid == "high" and result.masks is not None:  # equal one-shot masks: equal sequential masks too
            self.masks[key] = result.masks
        self.counts["evaluated"] += 1
        self.counts["mask_hits"] += int(result.cached)
        self.history.append({"key": key, "fidelity": fid, "loss": loss if math.isfinite(loss) else None, "proposed": self.counts["proposed"],
                             "generation": self.generation, "error": result.error})

    def done(self) -> bool:
        last = "sequential" if self.space.sequential > 0 else "promote"
        if self.space.generations is None:
            return False
        return (self.generation >= self.space.generations - 1 and self._stage == last
                and not self._queue and not self._inflight)

    def _table(self) -> dict[str, float]:
        """The most faithful fidelity with a finite score: sequential, else full, else low."""
        for table in (self.seq, self.high, self.low):
            if any(math.isfinite(v) for v in table.values()):
                return table
        return {}

    @staticmethod
    def _best_key(table: dict[str, float]) -> str | None:
        finite = {k: v for k, v in table.items() if math.isfinite(v)}
        return min(finite, key=finite.get) if finite else None

    def hall_of_fame(self) -> list[dict[str, float | str]]:
        """Best first, ranked at the most faithful fidelity scored: {"key", "low", "high", "seq"}
        (a fidelity not scored is inf). Keys with the same masks are one entry, the shortest."""
        table = self._table()
        shortest: dict[str, str] = {}  # masks digest (or the key itself) -> shortest key
        for k in table:
            d = self.masks.get(k, k)
            if d not in shortest or (len(k), k) < (len(shortest[d]), shortest[d]):
                shortest[d] = k
        keys = sorted(shortest.values(), key=table.get)[: self.space.hall_of_fame]
        return [{"key": k, **{f: t.get(k, math.inf) for f, t in (("low", self.low), ("high", self.high), ("seq", self.seq))}}
                for k in keys]

    def best(self) -> tuple[Policy, float] | None:
        table, hof = self._table(), self.hall_of_fame()
        if not hof or not math.isfinite(table[hof[0]["key"]]):
            return None
        return replace(self.context.base_policy, metric=hof[0]["key"]), table[hof[0]["key"]]

    def state_dict(self) -> dict:
        """Candidates in flight are kept apart: the driver tells their results after a resume (it
        runs again what it had asked), so the search continues where it stopped."""
        return {"generation": self.generation, "stage": self._stage,
                "population": [str(e) for e in self.population], "low": _finite_or_none(self.low),
                "high": _finite_or_none(self.high), "seq": _finite_or_none(self.seq), "masks": self.masks,
                "seconds": self.seconds,
                "queue": [list(x) for x in self._queue], "inflight": [list(x) for x in sorted(self._inflight)],
                "counts": self.counts, "history": self.history,
                "rng": _rng_to_json(self._rng.getstate())}

    def load_state_dict(self, state: dict) -> None:
        self.generation, self._stage = state["generation"], state["stage"]
        self.population = [parse(s) for s in state["population"]]
        self.low = {k: math.inf if v is None else float(v) for k, v in state["low"].items()}
        self.high = {k: math.inf if v is None else float(v) for k, v in state["high"].items()}
        self.seq = {k: math.inf if v is None else float(v) for k, v in state.get("seq", {}).items()}
        self.masks = dict(state.get("masks", {}))
        self.seconds = {**self.seconds, **state.get("seconds", {})}
        self._queue = [(k, f) for k, f in state["queue"]]  # (states saved before "inflight" hold them here)
        self._inflight = {(k, f) for k, f in state.get("inflight", [])}
        self.counts, self.history = dict(state["counts"]), list(state["history"])
        self._rng.setstate(_rng_from_json(state["rng"]))


def _rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(state: list) -> tuple:
    return state[0], tuple(state[1]), state[2]


def _finite_or_none(d: dict[str, float]) -> dict[str, float | None]:
    """JSON has no infinity: the worst fitness is stored as null."""
    return {k: v if math.isfinite(v) else None for k, v in d.items()}


def _nodes(e: Expr):
    yield e
    for a in e.args:
        yield from _nodes(a)
