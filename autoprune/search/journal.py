"""The search's source of truth: an append-only JSONL journal and atomically replaced state files.

Every event (a candidate submitted, its result, a phase ended, a validation) is one line,
flushed and fsynced before anything else is told of it, so a ``kill -9`` loses at most the
candidates still running. Strategy states are JSON files replaced atomically (write, fsync,
rename), each stamped with the last journal id it reflects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from autoprune.errors import UserError


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default


class Journal:
    """Events of one search in ``path``; ``events`` holds those already written (on resume too)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.events: list[dict] = []
        if self.path.exists():
            text = self.path.read_text()
            if text and not text.endswith("\n"):  # a line torn by a kill mid-write: drop it
                text = text[:text.rfind("\n") + 1]
                with open(self.path, "r+") as f:
                    f.truncate(len(text.encode()))
            for n, line in enumerate(text.splitlines(), 1):
                try:
                    self.events.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserError(f"{self.path}: line {n} is not JSON; the journal is damaged") from None
        self._submits: dict[int, dict] = {}
        self._results: dict[int, dict] = {}
        for e in self.events:
            self._index(e)
        self._file = open(self.path, "a")
        self.next_id = 1 + max((e.get("id", 0) for e in self.events), default=0)

    def append(self, event: dict) -> dict:
        self._file.write(json.dumps(event) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self.events.append(event)
        self._index(event)
        return event

    def _index(self, e: dict) -> None:
        if e["event"] == "submit":
            self._submits[e["id"]] = e
        elif e["event"] == "result" and e["id"] in self._submits:
            self._results[e["id"]] = {**self._submits[e["id"]], "result": e["result"]}

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]

    def results(self) -> dict[int, dict]:
        """Candidate id -> its submit event merged with its result (completed candidates only)."""
        return self._results

    def pending(self) -> list[dict]:
        """Submitted candidates without a result (running when the search stopped)."""
        return [e for cid, e in self._submits.items() if cid not in self._results]

    def close(self) -> None:
        self._file.close()
