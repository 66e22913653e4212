"""Base for command configs: typed dataclasses, validated, unknown keys refused, saved with results."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import TypeVar

from autoprune.errors import UserError

C = TypeVar("C", bound="Config")


class Config:
    """Mixin for dataclass configs: ``from_dict`` refuses unknown keys; ``save`` writes JSON."""

    @classmethod
    def from_dict(cls: type[C], d: dict) -> C:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"{cls.__name__}: unknown keys {', '.join(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
