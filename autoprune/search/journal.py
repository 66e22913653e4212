"""The search's source of truth: an append-only JSONL journal and atomically replaced state files.

Every event (``search.events``: a candidate submitted, its result, a phase ended, a validation)
is one line (``jsonl``), flushed and fsynced before anything else is told of it, so a ``kill -9``
loses at most the candidates still running. Strategy states are JSON files replaced atomically (write,
fsync, rename), each stamped with the number of journal events it reflects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from autoprune.errors import UserError
from autoprune.jsonl import JsonLines
from autoprune.search.events import Event, decode, encode


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


def read_events(path: Path) -> list[Event]:
    """The events of a journal, up to its last complete line (one a kill tore mid-write is not an event)."""
    return _decode(JsonLines(path).lines, path)


def _decode(lines: list[str], path: Path) -> list[Event]:
    events = []
    for n, line in enumerate(lines, 1):
        try:
            events.append(decode(json.loads(line)))
        except (json.JSONDecodeError, UserError) as e:
            raise UserError(f"{path}: line {n} is not a journal event ({e}); the journal is damaged") from None
    return events


class Journal:
    """Events of one search in ``path``; ``events`` holds those already written (on resume too)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lines = JsonLines(self.path)
        self.events: list[Event] = _decode(self._lines.lines, self.path)
        self._lines.cut_torn()
        self._lines.open()

    def append(self, event: Event) -> Event:
        self._lines.append(encode(event))
        self.events.append(event)
        return event

    def close(self) -> None:
        self._lines.close()
