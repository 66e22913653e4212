"""Base for command configs: typed dataclasses, validated, unknown keys refused, saved with results."""

from __future__ import annotations

import json
import os
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


def check_positive(cfg: Config, *names: str) -> None:
    """A one-line error unless each named field is None or positive."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise UserError(f"{name.replace('_', '-')} must be positive, got {value}")


def check_out(path: Path) -> None:
    """A one-line error unless ``path`` is a folder or can be made one; a probe leaves nothing behind."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"--out {path}: a file is there, not a folder")
        return
    missing = [path, *(p for p in path.parents if not p.exists())]
    try:
        path.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"--out {path}: cannot be created ({e.strerror})") from None
    for p in missing:  # deepest first
        os.rmdir(p)
