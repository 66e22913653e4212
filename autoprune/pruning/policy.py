"""A pruning policy: which weights to score how, how much of each block to remove, and how.

A policy is data: a frozen, validated object that round-trips through JSON. It is what the
search proposes, what tracking logs, what export writes and what ``autoprune prune`` applies.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from autoprune.errors import UserError

ALLOCATIONS = ("uniform", "owl", "alpha", "explicit")
UPDATES = ("none", "sparsegpt", "admm")  # weight reconstruction after the mask (see ``update``)
METHODS = ("magnitude", "wanda", "ria", "sparsegpt")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> None, ``"2:4"`` -> (2, 4): keep N of every M consecutive weights."""
    if pattern == "unstructured":
        return None
    parts = pattern.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise UserError(f"malformed pattern {pattern!r}: use 'unstructured' or N:M such as 2:4")
    n, m = int(parts[0]), int(parts[1])
    if not 0 < n < m:
        raise UserError(f"malformed pattern {pattern!r}: N:M needs 0 < N < M")
    return n, m


def _layer_ratios(value, block_ratios: tuple[float, ...] | None) -> tuple[tuple[tuple[str, float], ...], ...]:
    """Per-block {linear name: ratio} (JSON) or pairs -> a hashable tuple of sorted pairs, validated."""
    if block_ratios is None:
        raise UserError("layer_ratios need allocation 'explicit' with block_ratios")
    if not isinstance(value, (list, tuple)) or len(value) != len(block_ratios):
        raise UserError(f"layer_ratios need one entry per block ({len(block_ratios)})")
    blocks = []
    for block in value:
        pairs = block.items() if isinstance(block, dict) else block
        try:
            pairs = tuple(sorted((str(name), float(r)) for name, r in pairs))
        except (TypeError, ValueError):
            raise UserError("layer_ratios: each block maps linear names to ratios") from None
        if not all(0 <= r < 1 for _, r in pairs):
            raise UserError("every layer ratio must be in [0, 1)")
        blocks.append(pairs)
    return tuple(blocks)


@dataclass(frozen=True)
class Policy:
    """``metric`` is a named metric (magnitude, wanda, ria, sparsegpt) or a metric expression.

    ``sparsity`` is the global fraction of prunable weights removed. ``allocation`` spreads it
    over blocks: ``uniform``; ``owl`` (outlier-weighted, lambda and M as in the OWL paper);
    ``alpha`` (AlphaPruning, from the weights' spectra: blocks with heavier-tailed ESDs are
    pruned less; ratios in proportion to [1 - alpha_eps, 1 + alpha_eps], scaled to S); or
    ``explicit`` with one ratio per block in ``block_ratios`` and, optionally, ``layer_ratios``:
    per block, linear name within the block -> its own ratio (the others keep the block's).
    ``pattern`` is ``unstructured``
    (each output row loses the same fraction) or ``N:M``. ``update`` reconstructs the kept weights
    from the layer's Hessian: ``sparsegpt`` (OBS, column by column) or ``admm`` (all kept weights
    jointly, autoprune.pruning.admm); ``none`` only zeroes. Metric ``sparsegpt`` chooses the mask
    by OBS (SparseGPT's adaptive mask), then the update reconstructs it.
    """

    metric: str = "wanda"
    sparsity: float = 0.5
    pattern: str = "unstructured"
    allocation: str = "uniform"
    block_ratios: tuple[float, ...] | None = None
    layer_ratios: tuple[tuple[tuple[str, float], ...], ...] | None = None  # JSON: one object per block
    owl_lambda: float = 0.08
    owl_m: float = 5.0
    alpha_eps: float = 0.3  # the released AlphaPruning code's default
    update: str = "none"
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.sparsity, (int, float)) or not 0 <= self.sparsity < 1 or math.isnan(self.sparsity):
            raise UserError(f"sparsity must be in [0, 1), got {self.sparsity}")
        nm = parse_pattern(self.pattern)
        if nm is not None:
            implied = 1 - nm[0] / nm[1]
            if abs(self.sparsity - implied) > 1e-9:
                raise UserError(f"pattern {self.pattern} fixes sparsity at {implied:g}, not {self.sparsity:g}")
            if self.allocation != "uniform":
                raise UserError(f"pattern {self.pattern} needs allocation 'uniform'")
        if (not isinstance(self.alpha_eps, (int, float)) or isinstance(self.alpha_eps, bool)
                or not 0 <= self.alpha_eps < 1 or math.isnan(self.alpha_eps)):
            raise UserError(f"alpha_eps must be in [0, 1), got {self.alpha_eps!r}")
        if self.allocation not in ALLOCATIONS:
            raise UserError(f"unknown allocation {self.allocation!r} (choose {', '.join(ALLOCATIONS)})")
        if (self.allocation == "explicit") != (self.block_ratios is not None):
            raise UserError("block_ratios are given exactly when allocation is 'explicit'")
        if self.block_ratios is not None:
            object.__setattr__(self, "block_ratios", tuple(float(r) for r in self.block_ratios))
            if not all(0 <= r < 1 for r in self.block_ratios):
                raise UserError("every block ratio must be in [0, 1)")
        if self.layer_ratios is not None:
            object.__setattr__(self, "layer_ratios", _layer_ratios(self.layer_ratios, self.block_ratios))
        if self.update not in UPDATES:
            raise UserError(f"unknown update {self.update!r} (choose {', '.join(UPDATES)})")
        if self.metric == "sparsegpt" and self.update == "none":
            raise UserError("metric 'sparsegpt' (the OBS mask) needs a weight update (sparsegpt or admm)")
        if not self.metric.strip():
            raise UserError("empty metric")

    @classmethod
    def from_method(cls, method: str, sparsity: float, pattern: str = "unstructured",
                    allocation: str = "uniform") -> "Policy":
        if method not in METHODS:
            raise UserError(f"unknown method {method!r} (choose {', '.join(METHODS)})")
        nm = parse_pattern(pattern)
        if nm is not None:
            sparsity = 1 - nm[0] / nm[1]
        return cls(metric=method, sparsity=sparsity, pattern=pattern, allocation=allocation,
                   update="sparsegpt" if method == "sparsegpt" else "none")

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["block_ratios"] is not None:
            d["block_ratios"] = list(d["block_ratios"])
        if d["layer_ratios"] is not None:
            d["layer_ratios"] = [dict(block) for block in self.layer_ratios]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Policy":
        if not isinstance(d, dict):
            raise UserError("a policy is a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown policy keys: {', '.join(unknown)}")
        return cls(**d)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Policy":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise UserError(f"{path}: policy file not found") from None
        except OSError as e:
            raise UserError(f"{path}: cannot read the policy file ({e.strerror})") from None
        except UnicodeDecodeError:
            raise UserError(f"{path}: not a policy file (not UTF-8 text)") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        except TypeError as e:
            raise UserError(f"{path}: invalid policy ({e})") from None
