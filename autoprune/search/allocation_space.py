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

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from autoprune.errors import UserError
from autoprune.pruning.policy import Policy
from autoprune.search.spec import load_yaml, packaged_dir

KINDS = ("per_block", "depth_curve", "attn_mlp", "owl")
_KEYS = {"kind", "span", "bounds", "knots", "per_block", "lambda", "m"}
_ATTENTION_WORDS = ("attn", "attention")


@dataclass(frozen=True)
class Param:
    name: str
    low: float
    high: float


@dataclass(frozen=True)
class AllocationSpace:
    name: str
    kind: str
    span: float = 0.25
    bounds: tuple[float, float] = (0.0, 0.95)
    knots: int = 3
    per_block: bool = False
    owl_lambda: tuple[float, float] = (0.02, 0.25)
    owl_m: tuple[float, float] = (3.0, 10.0)

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


def _pair(name: str, key: str, value, low: float, high: float) -> tuple[float, float]:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) for v in value) or not low <= value[0] <= value[1] <= high):
        raise UserError(f"allocation space {name!r}: {key} must be [low, high] within [{low:g}, {high:g}]")
    return float(value[0]), float(value[1])


def parse_space(name: str, d: dict) -> AllocationSpace:
    """Validate one space's YAML mapping (unknown keys refused)."""
    if not isinstance(d, dict):
        raise UserError(f"allocation space {name!r} must be a mapping")
    unknown = sorted(set(d) - _KEYS)
    if unknown:
        raise UserError(f"allocation space {name!r}: unknown keys {', '.join(map(str, unknown))}")
    kind = d.get("kind")
    if kind not in KINDS:
        raise UserError(f"allocation space {name!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    span = d.get("span", 0.25)
    if not isinstance(span, (int, float)) or not 0 < span < 1:
        raise UserError(f"allocation space {name!r}: span must be in (0, 1)")
    knots = d.get("knots", 3)
    if not isinstance(knots, int) or isinstance(knots, bool) or knots < 2:
        raise UserError(f"allocation space {name!r}: knots must be an integer >= 2")
    per_block = d.get("per_block", False)
    if not isinstance(per_block, bool):
        raise UserError(f"allocation space {name!r}: per_block must be true or false")
    return AllocationSpace(
        name=name, kind=kind, span=float(span), knots=knots, per_block=per_block,
        bounds=_pair(name, "bounds", d.get("bounds", [0.0, 0.95]), 0.0, 0.999),
        owl_lambda=_pair(name, "lambda", d.get("lambda", [0.02, 0.25]), 0.0, 0.5),
        owl_m=_pair(name, "m", d.get("m", [3.0, 10.0]), 1.0, 100.0))


def load_space(spec: str | dict, path: Path | None = None) -> AllocationSpace:
    """A space by name from ``path`` (default ``search_spaces/allocation.yaml``), or an inline mapping."""
    if isinstance(spec, dict):
        return parse_space(str(spec.get("name", "inline")), {k: v for k, v in spec.items() if k != "name"})
    path = Path(path) if path is not None else packaged_dir() / "allocation.yaml"
    spaces = load_yaml(path)
    if spec not in spaces:
        raise UserError(f"unknown allocation space {spec!r} (choose {', '.join(map(str, spaces))})")
    return parse_space(spec, spaces[spec])
