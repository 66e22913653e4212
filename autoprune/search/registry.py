"""Every search strategy by name, with the phase it searches in.

A strategy is constructed as ``cls(context, space)`` (``search.base``); the conformance suite
(tests/search/test_conformance.py) runs on every name here, so a new strategy is tested the
moment it is registered.
"""

from __future__ import annotations

import importlib

from autoprune.errors import UserError
from autoprune.search.base import Strategy

# name -> (import path, phase: "metric", "allocation" or "both")
REGISTRY: dict[str, tuple[str, str]] = {
    "gp": ("autoprune.search.gp:GPStrategy", "metric"),
    "bo": ("autoprune.search.bo:BOSpaces", "allocation"),
    "rl": ("autoprune.search.rl:RLStrategy", "allocation"),
    "evo": ("autoprune.search.evo:EvoStrategy", "allocation"),
    "random": ("autoprune.search.random_search:RandomStrategy", "both"),
}
PHASES = ("metric", "allocation")


def strategy_class(name: str) -> type[Strategy]:
    if name not in REGISTRY:
        raise UserError(f"unknown strategy {name!r} (choose {', '.join(REGISTRY)})")
    module, cls = REGISTRY[name][0].split(":")
    return getattr(importlib.import_module(module), cls)


def in_phase(name: str, phase: str) -> bool:
    return REGISTRY[name][1] in (phase, "both")
