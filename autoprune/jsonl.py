"""Append-only JSON-lines files that survive a kill: the record of a search, pruning or structured.

Each record is one line, flushed and fsynced before ``append`` returns, so a ``kill -9`` loses at
most the line it tore. Reading stops at the last complete line; ``cut_torn`` drops the torn rest,
so that the next line starts clean (the caller does so once it has accepted what it read).
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class JsonLines:
    def __init__(self, path: Path):
        self.path = Path(path)
        data = self.path.read_bytes() if self.path.exists() else b""
        self._end = data.rfind(b"\n") + 1  # bytes up to the end of the last complete line
        self.torn = len(data) > self._end
        self.lines: list[str] = data[:self._end].decode().splitlines()  # the complete lines, read at opening
        self._file = None

    def cut_torn(self) -> None:
        if self.torn:
            with open(self.path, "r+b") as f:
                f.truncate(self._end)
            self.torn = False

    def open(self) -> None:
        """The file (and its folder) made, if they are not there, ready to append."""
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")

    def append(self, record: dict) -> None:
        self.open()
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
