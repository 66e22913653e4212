"""The journal's events, their one JSON codec, and the pure replay of a journal into search state.

The journal (``search.journal``) is the search's source of truth: one JSON line per event. Here
each kind of line is a frozen dataclass; ``encode``/``decode`` are the only place where an event
becomes JSON or comes back, and ``SearchState.apply`` folds events into what the search knows
(candidates submitted and scored, phases begun and ended, validations), touching nothing else,
so ``replay(events)`` rebuilds a stopped search's state exactly.

JSON lines (unchanged since the first journals, so old runs resume):
    {"event": "submit", "id", "phase", "strategy", "policy", "batches", "sequential", "tag", "t"}
    {"event": "result", "id", "result": ProxyResult, "t"}
    {"event": "phase_start" | "phase_end", "phase", "t"}
    {"event": "validate", "id", "result": ValidationResult, "t"}      a candidate on the selection split
    {"event": "baseline", "name", "result": ValidationResult, "t"}    a recipe on the selection split
    {"event": "report", "key", "result": ValidationResult, "t"}       on the evaluation data
    {"event": "note", "text", "t"}, {"event": "done", "t"}
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from autoprune.errors import UserError
from autoprune.messages import ProxyResult, ValidationResult, result_from
from autoprune.pruning.policy import Policy


@dataclass(frozen=True)
class Submitted:
    id: int
    phase: str
    strategy: str
    policy: Policy
    batches: int | None = None
    sequential: bool = False
    tag: dict = field(default_factory=dict, compare=False)
    t: float = 0.0


@dataclass(frozen=True)
class Scored:
    id: int
    result: ProxyResult
    t: float = 0.0


@dataclass(frozen=True)
class PhaseStarted:
    phase: str
    t: float = 0.0


@dataclass(frozen=True)
class PhaseEnded:
    phase: str
    t: float = 0.0


@dataclass(frozen=True)
class Selected:
    """A validation on the selection split: of a candidate (``key`` its id) or a recipe (its name)."""

    key: int | str
    result: ValidationResult
    t: float = 0.0


@dataclass(frozen=True)
class Reported:
    """A validation on the evaluation data (chooses nothing)."""

    key: int | str
    result: ValidationResult
    t: float = 0.0


@dataclass(frozen=True)
class Note:
    text: str
    t: float = 0.0


@dataclass(frozen=True)
class Done:
    t: float = 0.0


Event = Submitted | Scored | PhaseStarted | PhaseEnded | Selected | Reported | Note | Done


def _jsonable(tag: dict) -> dict:
    """A strategy's bookkeeping as it can be written (dropped when it cannot)."""
    try:
        json.dumps(tag)
        return tag
    except (TypeError, ValueError):
        return {}


def encode(e: Event) -> dict:
    t = round(e.t, 3)
    if isinstance(e, Submitted):
        return {"event": "submit", "id": e.id, "phase": e.phase, "strategy": e.strategy, "policy": e.policy.to_dict(),
                "batches": e.batches, "sequential": e.sequential, "tag": _jsonable(e.tag), "t": t}
    if isinstance(e, Scored):
        return {"event": "result", "id": e.id, "result": asdict(e.result), "t": t}
    if isinstance(e, (PhaseStarted, PhaseEnded)):
        return {"event": "phase_start" if isinstance(e, PhaseStarted) else "phase_end", "phase": e.phase, "t": t}
    if isinstance(e, Selected):
        key = {"name": e.key} if isinstance(e.key, str) else {"id": e.key}
        return {"event": "baseline" if isinstance(e.key, str) else "validate", **key, "result": _validation(e.result),
                "t": t}
    if isinstance(e, Reported):
        return {"event": "report", "key": e.key, "result": _validation(e.result), "t": t}
    if isinstance(e, Note):
        return {"event": "note", "text": e.text, "t": t}
    if isinstance(e, Done):
        return {"event": "done", "t": t}
    raise TypeError(f"not a journal event: {e!r}")


def _validation(r: ValidationResult) -> dict:
    d = asdict(r)
    d["block_ratios"] = list(r.block_ratios)
    return d


def decode(d: dict) -> Event:
    """The event of one journal line; ``UserError`` for a line no version of autoprune wrote."""
    try:
        kind, t = d["event"], float(d.get("t", 0.0))
        if kind == "submit":
            return Submitted(int(d["id"]), d["phase"], d["strategy"], Policy.from_dict(d["policy"]), d.get("batches"),
                             bool(d.get("sequential", False)), d.get("tag") or {}, t)
        if kind == "result":
            return Scored(int(d["id"]), result_from(ProxyResult, d["result"]), t)
        if kind == "phase_start":
            return PhaseStarted(d["phase"], t)
        if kind == "phase_end":
            return PhaseEnded(d["phase"], t)
        if kind in ("validate", "baseline"):
            return Selected(int(d["id"]) if kind == "validate" else d["name"], _decode_validation(d["result"]), t)
        if kind == "report":
            return Reported(d["key"], _decode_validation(d["result"]), t)
        if kind == "note":
            return Note(d["text"], t)
        if kind == "done":
            return Done(t)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"journal event {str(d)[:120]}: {type(e).__name__}: {e}") from None
    raise UserError(f"journal event of unknown kind {kind!r}")


def _decode_validation(d: dict) -> ValidationResult:
    return result_from(ValidationResult, {"perplexity": math.inf, "seconds": 0.0, **d})


@dataclass(frozen=True)
class Evaluated:
    """A scored candidate: what was submitted and what it scored, at its fidelity (the share of the
    proxy batches it was scored on)."""

    submitted: Submitted
    result: ProxyResult
    fidelity: float

    @property
    def id(self) -> int:
        return self.submitted.id

    @property
    def strategy(self) -> str:
        return self.submitted.strategy

    @property
    def policy(self) -> Policy:
        return self.submitted.policy

    @property
    def sequential(self) -> bool:
        return self.submitted.sequential

    @property
    def full(self) -> bool:
        """Scored at full fidelity without error: comparable with every other such candidate."""
        return self.fidelity >= 1.0 and self.result.error is None

    def row(self) -> dict:
        """The flat view tracking, plots and the CSV read: the journal's submit line with its
        result and fidelity."""
        row = encode(self.submitted)
        del row["event"]
        return {**row, "result": asdict(self.result), "fidelity": self.fidelity}


class SearchState:
    """What the journal's events say, folded in order by ``apply`` (pure: no I/O, no clock)."""

    def __init__(self, max_batches: int):
        self.max_batches = max_batches
        self.submitted: dict[int, Submitted] = {}
        self.scored: dict[int, Evaluated] = {}  # in the order the results came
        self.started: list[str] = []  # phases, in the order they started (a phase may start twice)
        self.ended: list[str] = []
        self.selected: dict[int | str, ValidationResult] = {}
        self.reported: dict[int | str, ValidationResult] = {}
        self.notes: list[str] = []
        self.done = False
        self.next_id = 1
        self.events = 0  # events applied: what a strategy's saved state is stamped with

    def apply(self, e: Event) -> None:
        self.events += 1
        if isinstance(e, Submitted):
            self.submitted[e.id] = e
            self.next_id = max(self.next_id, e.id + 1)
        elif isinstance(e, Scored):
            sub = self.submitted.get(e.id)
            if sub is not None:
                fidelity = 1.0 if sub.batches is None else min(1.0, sub.batches / self.max_batches)
                self.scored[e.id] = Evaluated(sub, e.result, fidelity)
        elif isinstance(e, PhaseStarted):
            self.started.append(e.phase)
        elif isinstance(e, PhaseEnded):
            self.ended.append(e.phase)
        elif isinstance(e, Selected):
            self.selected[e.key] = e.result
        elif isinstance(e, Reported):
            self.reported[e.key] = e.result
        elif isinstance(e, Note):
            self.notes.append(e.text)
        elif isinstance(e, Done):
            self.done = True

    def pending(self) -> list[Submitted]:
        """Submitted candidates without a result (running when the search stopped)."""
        return [s for cid, s in self.submitted.items() if cid not in self.scored]


def replay(events: list[Event], max_batches: int) -> SearchState:
    state = SearchState(max_batches)
    for e in events:
        state.apply(e)
    return state
