"""What a structured search measured, kept in its folder so that an interrupted search resumes.

A search's costly parts are facts about plans, whatever is searched for: the decode timings of a
shape on this machine, and the proxy perplexity of a plan under the calibration and selection
data. ``search.jsonl`` in the ``--out`` folder records each as it is measured (one JSON line,
flushed and synced; a torn last line is dropped: ``autoprune.jsonl``). A rerun into the same folder reads them back
and replays them: the Planner is handed a shape's recorded timings, in the order they were
taken, before it times anything anew, and the proxy a plan's recorded score. The strategies are
deterministic given their seed and what they are told, so a rerun with the same options retraces
the interrupted search in seconds and carries on where it stopped; with other options (more
trials, another target or strategy) it reuses whatever facts it asks for again.

The facts hold only under the settings they were measured with (``facts``: model, data, windows,
proxy, this host): a rerun under others is refused in one line, and nothing is lost. The first
line is written when the search starts timing for good, so a refused target leaves no folder.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from autoprune.errors import UserError
from autoprune.jsonl import JsonLines
from autoprune.structured.layout import Plan

JOURNAL_FILE = "search.jsonl"


@dataclass(frozen=True)
class Timing:
    shape: Plan
    speedup: float
    dense: float  # decode tokens/s of the dense model in the same measurement
    shrunk: float


@dataclass(frozen=True)
class Scored:
    plan: Plan
    loss: float


def _plan(d: dict) -> Plan:
    return Plan(int(d["blocks"]), int(d["kv_groups"]), int(d["channels"]), tuple(int(b) for b in d["drop"]))


def encode(event: Timing | Scored) -> dict:
    p = event.shape if isinstance(event, Timing) else event.plan
    plan = {"blocks": p.blocks, "kv_groups": p.kv_groups, "channels": p.channels, "drop": list(p.drop)}
    if isinstance(event, Timing):
        return {"kind": "timing", "plan": plan, "speedup": event.speedup, "dense": event.dense, "shrunk": event.shrunk}
    return {"kind": "scored", "plan": plan, "loss": event.loss}


def decode(d: dict) -> Timing | Scored | dict:
    """An event, or the header's facts (a dict); ``ValueError``/``KeyError`` when damaged."""
    if d["kind"] == "facts":
        return dict(d["facts"])
    if d["kind"] == "timing":
        return Timing(_plan(d["plan"]), float(d["speedup"]), float(d["dense"]), float(d["shrunk"]))
    if d["kind"] == "scored":
        return Scored(_plan(d["plan"]), float(d["loss"]))
    raise ValueError(f"unknown kind {d['kind']!r}")


class Journal:
    """The facts a search in ``folder`` measured under ``facts`` (settings -> values), and the record
    of new ones; ``start()`` makes the file (until then new facts wait in memory)."""

    def __init__(self, folder: Path, facts: dict):
        self.path, self.facts = Path(folder) / JOURNAL_FILE, facts
        self._file = JsonLines(self.path)
        self._timings: dict[Plan, list[Timing]] = defaultdict(list)
        self._scores: dict[Plan, float] = {}
        self._waiting: list[dict] = []
        self._started = bool(self._file.lines)
        self.replayed = 0  # recorded facts read back
        self._read()

    def _read(self) -> None:
        for n, line in enumerate(self._file.lines, 1):
            try:
                event = decode(json.loads(line))
                if (n == 1) != isinstance(event, dict):
                    raise ValueError("the settings come first, once")
            except (ValueError, KeyError, TypeError) as e:
                raise UserError(f"{self.path}:{n}: damaged line ({e}); move the file away to start the search "
                                "afresh") from None
            if isinstance(event, dict):
                changed = sorted(k for k in set(event) | set(self.facts) if event.get(k) != self.facts.get(k))
                if changed:
                    k = changed[0]
                    raise UserError(f"{self.path.parent}: holds a search measured with {k}={event.get(k)!r}, not "
                                    f"{self.facts.get(k)!r}; rerun with the same settings or choose another --out")
            elif isinstance(event, Timing):
                self._timings[event.shape].append(event)
            else:
                self._scores[event.plan] = event.loss
            self.replayed += not isinstance(event, dict)
        self._file.cut_torn()

    def start(self) -> None:
        """The file from now on (with its header, and the facts measured so far)."""
        if self._started:
            return
        self._started = True
        self._append({"kind": "facts", "facts": self.facts})
        for record in self._waiting:
            self._append(record)
        self._waiting = []

    def _append(self, record: dict) -> None:
        if self._started:
            self._file.append(record)
        else:
            self._waiting.append(record)

    def next_timing(self, shape: Plan) -> Timing | None:
        """The shape's earliest recorded timing not yet handed back (None: time it anew)."""
        queue = self._timings.get(shape)
        return queue.pop(0) if queue else None

    def timed(self, timing: Timing) -> None:
        self._append(encode(timing))

    def score(self, plan: Plan, compute) -> float:
        """The plan's recorded proxy score, or ``compute(plan)``, recorded."""
        if plan not in self._scores:
            self._scores[plan] = compute(plan)
            self._append(encode(Scored(plan, self._scores[plan])))
        return self._scores[plan]
