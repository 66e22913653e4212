"""The typed messages that cross between the parts of a search, and between processes.

A strategy proposes ``Candidate``s (search.base); the scheduler sends them to an executor as
``ProxyJob``s and gets ``ProxyResult``s back; the validator sends ``ValidationJob``s and gets
``ValidationResult``s. All are frozen dataclasses that cross Ray as they are (pickled by Ray
within one search, never read from a user's file); JSON appears only in the journal
(``search.events``). This module imports neither torch nor the engine, so strategies and the
scheduler run in a process without a model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields

from autoprune.pruning.policy import Policy


@dataclass(frozen=True)
class ProxyResult:
    loss: float  # lower is better; inf when the candidate failed
    sparsity: float
    seconds: float
    tokens: int
    error: str | None = None
    cached: bool = False  # the same masks were evaluated before at this fidelity: no forward pass ran
    masks: str | None = None  # digest of the masks (ProxyEvaluator.mask_hash): equal digests, equal pruned models
    prepared: float = 0.0  # of ``seconds``, those spent collecting statistics this candidate first needed (once)

    @property
    def ok(self) -> bool:
        return self.error is None and math.isfinite(self.loss)

    @classmethod
    def failed(cls, error: str, seconds: float = 0.0) -> "ProxyResult":
        return cls(math.inf, math.nan, seconds, 0, error)


@dataclass(frozen=True)
class ValidationResult:
    """The full sequential protocol's perplexity of one policy (None: the dense model) on a split."""

    perplexity: float
    seconds: float
    tokens: int = 0
    sparsity: float = math.nan
    block_ratios: tuple[float, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and math.isfinite(self.perplexity)

    @classmethod
    def failed(cls, error: str, seconds: float = 0.0) -> "ValidationResult":
        return cls(math.inf, seconds, error=error)


@dataclass(frozen=True)
class ProxyJob:
    """Candidates scored by the proxy in one job: several one-shot candidates of one fidelity are
    stacked into one forward pass; a sequential candidate is a job of its own."""

    ids: tuple[int, ...]
    policies: tuple[Policy, ...]
    batches: int | None = None  # proxy fidelity: the first N proxy batches (None: all of them)
    sequential: bool = False

    def failed(self, error: str) -> tuple[ProxyResult, ...]:
        return tuple(ProxyResult.failed(error) for _ in self.ids)


@dataclass(frozen=True)
class ValidationJob:
    """One policy by the full protocol on the ``select`` split (where the winner is chosen) or the
    ``eval`` split (where it is only reported). ``key``: a candidate id, or a recipe's key."""

    key: int | str
    policy: Policy | None  # None: the dense model
    split: str = "select"

    def failed(self, error: str) -> ValidationResult:
        return ValidationResult.failed(error)


Job = ProxyJob | ValidationJob


def policy_key(policy: Policy | dict, batches: int | None = None, sequential: bool = False) -> str:
    """Equal keys, equal evaluations: the policy (less its notes) and the fidelity it is scored at."""
    d = policy.to_dict() if isinstance(policy, Policy) else policy
    d = {k: v for k, v in d.items() if k != "meta"}
    return json.dumps([d, batches, "sequential"] if sequential else [d, batches], sort_keys=True)


def result_from(cls, d: dict):
    """``cls`` from a dict, keys it does not know dropped (journals written by older versions)."""
    known = {f.name for f in fields(cls)}
    kw = {k: v for k, v in d.items() if k in known}
    if "block_ratios" in kw:
        kw["block_ratios"] = tuple(kw["block_ratios"])
    return cls(**kw)
