"""Layer-wise sparsity allocation spaces: a few numbers in, an exact per-linear allocation out.

Notation (one model, linears i with weight counts w_i, N = sum_i w_i, global target S):
    x_i   raw ratio a parametrisation gives linear i (the target plus offsets)
    r_i   projected ratio: clip(x_i + t, lo, hi) with the one shift t for which sum_i w_i r_i = S N
    c_i   pruned weights of linear i: r_i w_i rounded so that sum_i c_i = round(S N) exactly

Parametrisations (``kind``), each a named entry of ``search_spaces/allocation.yaml``:
    per_block    one offset per block, in [-span, span]
    depth_curve  ``knots`` offsets at evenly spaced depths, linearly interpolated over the blocks
    attn_mlp     one attention-minus-MLP offset (attention linears +a/2, MLP -a/2), plus
                 per-block offsets when ``per_block`` is true
    owl          OWL's lambda and M; the engine computes the ratios from outlier statistics
                 (centred on the target, so exact up to per-linear rounding when blocks are equal)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from autoprune.config import need, read
from autoprune.errors import UserError
from autoprune.pruning.policy import Policy
from autoprune.search.spec import load_yaml, packaged_dir

KINDS = ("per_block", "depth_curve", "attn_mlp", "owl")
_ATTENTION_WORDS = ("attn", "attention")


@dataclass(frozen=True)
class Param:
    name: str
    low: float
    high: float


@dataclass(frozen=True)
class AllocationSpace:
    """One entry of ``allocation.yaml`` (its key is ``name``); the defaults are the packaged file's."""

    name: str
    kind: Literal["per_block", "depth_curve", "attn_mlp", "owl"]
    span: float = 0.25
    bounds: tuple[float, float] = (0.0, 0.95)
    knots: int = 3
    per_block: bool = False
    owl_lambda: tuple[float, float] = field(default=(0.02, 0.25), metadata={"key": "lambda"})
    owl_m: tuple[float, float] = field(default=(3.0, 10.0), metadata={"key": "m"})

    def __post_init__(self) -> None:
        need(0 < self.span < 1, f"span must be in (0, 1), got {self.span:g}")
        need(self.knots >= 2, f"knots must be an integer >= 2, got {self.knots}")
        for key, (low, high), (lo, hi) in (("bounds", self.bounds, (0.0, 0.999)), ("lambda", self.owl_lambda, (0.0, 0.5)),
                                           ("m", self.owl_m, (1.0, 100.0))):
            need(lo <= low <= high <= hi, f"{key} must be [low, high] within [{lo:g}, {hi:g}]")

    def params(self, n_blocks: int) -> list[Param]:
        """The search dimensions for a model with ``n_blocks`` blocks."""
        s = self.span
        if self.kind == "owl":
            return [Param("owl_lambda", *self.owl_lambda), Param("owl_m", *self.owl_m)]
        if self.kind == "depth_curve":
            return [Param(f"knot{k}", -s, s) for k in range(self.knots)]
        blocks = [Param(f"block{b}", -s, s) for b in range(n_blocks)]
        if self.kind == "per_block":
            return blocks
        return [Param("attn", -s, s)] + (blocks if self.per_block else [])

    def decode(self, values: dict[str, float], base: Policy, block_sizes: tuple[dict[str, int], ...]) -> Policy:
        """The policy for one point of the space: ``base`` with this allocation."""
        if self.kind == "owl":
            return replace(base, allocation="owl", block_ratios=None, layer_ratios=None,
                           owl_lambda=float(values["owl_lambda"]), owl_m=float(values["owl_m"]))
        n = len(block_sizes)
        if self.kind == "depth_curve":
            knots = [values[f"knot{k}"] for k in range(self.knots)]
            offsets = np.interp(np.linspace(0, 1, n), np.linspace(0, 1, self.knots), knots).tolist()
        elif self.kind == "per_block" or self.per_block:
            offsets = [values[f"block{b}"] for b in range(n)]
        else:
            offsets = [0.0] * n
        attn = values.get("attn", 0.0) if self.kind == "attn_mlp" else 0.0
        raw = [[base.sparsity + offsets[b] + (attn / 2 if is_attention(name) else -attn / 2) for name in sizes]
               for b, sizes in enumerate(block_sizes)]
        return explicit_policy(base, raw, block_sizes, self.bounds)


    def encode(self, block_ratios: list[float], target: float) -> dict[str, float] | None:
        """The point of this space nearest per-block ``block_ratios`` (a warm start), or None
        when the space cannot express per-block ratios (``owl``, ``attn_mlp`` without blocks)."""
        offsets = np.clip(np.asarray(block_ratios, dtype=np.float64) - target, -self.span, self.span)
        if self.kind == "depth_curve":
            at = np.linspace(0, 1, self.knots)
            return {f"knot{k}": float(v) for k, v in enumerate(np.interp(at, np.linspace(0, 1, len(offsets)), offsets))}
        if self.kind == "per_block" or (self.kind == "attn_mlp" and self.per_block):
            point = {f"block{b}": float(v) for b, v in enumerate(offsets)}
            return point if self.kind == "per_block" else {"attn": 0.0, **point}
        return None


def is_attention(linear_name: str) -> bool:
    return any(w in linear_name.lower() for w in _ATTENTION_WORDS)


def project(raw: list[float], sizes: list[int], target: float, bounds: tuple[float, float]) -> list[int]:
    """Pruned-weight counts c_i, ``sum c_i = round(target * N)``, from raw ratios (see notation)."""
    lo, hi = bounds
    w = np.asarray(sizes, dtype=np.float64)
    x = np.asarray(raw, dtype=np.float64)
    total = int(round(target * w.sum()))
    if total < np.ceil(lo * w).sum() or total > np.floor(hi * w).sum():
        raise UserError(f"per-layer bounds [{lo:g}, {hi:g}] cannot meet the target sparsity {target:g}")
    a, b = lo - x.max() - 1, hi - x.min() + 1  # shifts at which every ratio sits at lo / hi
    for _ in range(200):  # bisection on t: sum w clip(x + t) is non-decreasing in t
        t = (a + b) / 2
        a, b = (t, b) if (w * np.clip(x + t, lo, hi)).sum() < total else (a, t)
    r = np.clip(x + b, lo, hi)
    counts = np.clip(np.floor(r * w), np.ceil(lo * w), np.floor(hi * w)).astype(np.int64)
    room_up, room_down = np.floor(hi * w) - counts, counts - np.ceil(lo * w)
    left = total - int(counts.sum())
    frac = r * w - counts
    order = np.argsort(-frac if left > 0 else frac, kind="stable")
    step = 1 if left > 0 else -1
    room = room_up if step > 0 else room_down
    while left:  # hand the rounding remainder out one weight at a time, nearest the next count first
        for i in order:
            if left and room[i] > 0:
                counts[i] += step
                room[i] -= 1
                left -= step
    return counts.tolist()


def explicit_policy(base: Policy, raw: list[list[float]], block_sizes: tuple[dict[str, int], ...],
                    bounds: tuple[float, float]) -> Policy:
    """``base`` with per-linear ratios: ``raw`` (per block, per linear) projected onto the target."""
    sizes = [n for blk in block_sizes for n in blk.values()]
    counts = iter(project([x for blk in raw for x in blk], sizes, base.sparsity, bounds))
    layer, block = [], []
    for blk in block_sizes:
        ratios = {name: next(counts) / n for name, n in blk.items()}
        layer.append(ratios)
        block.append(sum(ratios[k] * n for k, n in blk.items()) / sum(blk.values()))
    return replace(base, allocation="explicit", block_ratios=tuple(block), layer_ratios=layer)


def allocation_sparsity(policy: Policy, block_sizes: tuple[dict[str, int], ...]) -> float:
    """The weight-count-weighted global sparsity an explicit policy asks for."""
    pruned = total = 0
    for b, blk in enumerate(block_sizes):
        own = dict(policy.layer_ratios[b]) if policy.layer_ratios else {}
        for name, n in blk.items():
            pruned += round(own.get(name, policy.block_ratios[b]) * n)
            total += n
    return pruned / total


def parse_space(name: str, d: dict) -> AllocationSpace:
    """Validate one space's YAML mapping (unknown keys refused)."""
    return read(AllocationSpace, {**d, "name": name} if isinstance(d, dict) else d, f"allocation space {name!r}")


def load_space(spec: str | dict, path: Path | None = None) -> AllocationSpace:
    """A space by name from ``path`` (default ``search_spaces/allocation.yaml``), or an inline mapping."""
    if isinstance(spec, dict):
        return parse_space(str(spec.get("name", "inline")), {k: v for k, v in spec.items() if k != "name"})
    if not isinstance(spec, str):
        raise UserError(f"an allocation space is a name or a mapping, got {spec!r}")
    path = Path(path) if path is not None else packaged_dir() / "allocation.yaml"
    spaces = load_yaml(path)
    if spec not in spaces:
        raise UserError(f"unknown allocation space {spec!r} (choose {', '.join(map(str, spaces))})")
    return parse_space(spec, spaces[spec])
