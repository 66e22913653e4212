"""Time budgets: parse ``30s``, ``20m``, ``8h`` (or ``1h30m``) and split one over the search phases.

A search spends its budget in three phases: metric search, allocation search with the
best metric, and final validation of the top candidates. ``Budget`` keeps the wall-clock
deadline; the seconds spent by an interrupted run are carried over on resume.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from autoprune.errors import UserError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_budget(text: str) -> float:
    """Seconds in ``text``: one or more NUMBER+UNIT parts (s, m, h, d), e.g. ``90s``, ``1h30m``."""
    s = str(text).strip().lower()
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not s or pos != len(s):
        raise UserError(f"malformed budget {text!r}: use a duration such as 30s, 20m, 8h or 1h30m")
    if total <= 0:
        raise UserError(f"budget must be positive, got {text!r}")
    return total


@dataclass(frozen=True)
class PhaseSplit:
    """Fractions of the budget: metric search, allocation search; the rest is final validation."""

    metric: float = 0.30
    allocation: float = 0.55  # evolution chooses the weight update and per-projection ratios here

    @property
    def validation(self) -> float:
        return 1.0 - self.metric - self.allocation


class Budget:
    """A wall-clock budget of ``total`` seconds of which ``spent`` were used by earlier runs."""

    def __init__(self, total: float, spent: float = 0.0, clock=time.monotonic):
        self.total = total
        self.clock = clock
        self._start = clock() - spent

    @property
    def elapsed(self) -> float:
        return self.clock() - self._start

    @property
    def left(self) -> float:
        return self.total - self.elapsed

    def at(self, fraction: float) -> float:
        """The clock reading at ``fraction`` of the budget."""
        return self._start + fraction * self.total

    def until(self, fraction: float) -> float:
        """Seconds left until ``fraction`` of the budget is spent (negative once past)."""
        return self.at(fraction) - self.clock()
