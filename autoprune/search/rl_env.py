"""A gymnasium environment that allocates sparsity one unit (block or linear) at a time.

Notation: units t = 0..T-1 in depth order, w_t weights each, N = sum w_t, target S, bounds
[lo, hi]. R_t = S N - sum_{u<t} r_u w_u is what is left to prune, W_t = sum_{u>t} w_u.
The action a in [-1, 1] moves the unit away from the average ratio still needed, within the
feasible range:
    r_t = clip(R_t / (w_t + W_t) + span a, l_t, h_t)
    l_t = max(lo, (R_t - hi W_t) / w_t),   h_t = min(hi, (R_t - lo W_t) / w_t),
so a = 0 throughout is the uniform allocation, and the last unit always lands the budget
exactly (AMC's constraint, by construction).

Rewards come at every step (PuRL): minus the damage the unit adds, as measured by a
``Damage`` oracle that forwards only the unit's block from cached hidden states; the last
step adds minus the whole model's proxy loss. The observation (AMC) describes the unit:
depth, type, size, its statistics, sparsity used so far and the average still needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import gymnasium as gym
import numpy as np

from autoprune.errors import UserError
from autoprune.pruning.policy import Policy
from autoprune.search.allocation_space import explicit_policy, is_attention

UNIT_KINDS = ("block", "linear")


@dataclass(frozen=True)
class Unit:
    block: int
    names: tuple[str, ...]  # linear names within the block
    size: int

    @property
    def kind(self) -> tuple[float, float]:
        """(attention share, MLP share) of the unit's linears, as two observation features."""
        attn = sum(is_attention(n) for n in self.names) / len(self.names)
        return attn, 1 - attn


def make_units(block_sizes: tuple[dict[str, int], ...], kind: str) -> list[Unit]:
    if kind not in UNIT_KINDS:
        raise UserError(f"unknown RL unit {kind!r} (choose {', '.join(UNIT_KINDS)})")
    if kind == "block":
        return [Unit(b, tuple(s), sum(s.values())) for b, s in enumerate(block_sizes)]
    return [Unit(b, (n,), w) for b, s in enumerate(block_sizes) for n, w in s.items()]


class Damage(Protocol):
    """The model side of the environment: ``autoprune.evaluation.block_damage.BlockDamage`` beside
    the model, or ``autoprune.search.pool.RemoteDamage`` calling one on a Ray worker."""

    def features(self, units: list[Unit]) -> np.ndarray: ...  # (units, k) statistics per unit
    def reset(self) -> None: ...
    def step(self, unit: Unit, ratio: float) -> float: ...  # damage this unit adds


class AllocationEnv(gym.Env):
    """One episode allocates every unit once; ``final_loss(policy)`` scores the finished allocation."""

    metadata = {"render_modes": []}

    def __init__(self, base: Policy, block_sizes: tuple[dict[str, int], ...], units: list[Unit],
                 final_loss: Callable[[Policy], float], damage: Damage | None = None,
                 bounds: tuple[float, float] = (0.0, 0.95), step_weight: float = 1.0, final_weight: float = 1.0,
                 span: float = 0.3):
        lo, hi = bounds
        if not 0 <= lo <= base.sparsity <= hi < 1:
            raise UserError(f"per-layer bounds [{lo:g}, {hi:g}] cannot meet the target sparsity {base.sparsity:g}")
        self.base, self.block_sizes, self.units = base, block_sizes, units
        self.final_loss, self.damage, self.bounds = final_loss, damage, bounds
        self.step_weight, self.final_weight, self.span = step_weight, final_weight, span
        self.sizes = np.array([u.size for u in units], dtype=np.float64)
        self.total = self.sizes.sum()
        feats = damage.features(units) if damage is not None else np.zeros((len(units), 0))
        self.features = np.asarray(feats, dtype=np.float32).reshape(len(units), -1)
        dim = 9 + self.features.shape[1]
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
        self.t, self.ratios, self.damages, self.last_policy = 0, [], [], None

    def _needed(self) -> float:
        """The average ratio the units from t on must take to land the budget."""
        used = float(np.dot(self.ratios, self.sizes[: self.t]))
        rest = self.sizes[self.t:].sum()
        return (self.base.sparsity * self.total - used) / rest if rest else 0.0

    def _range(self) -> tuple[float, float]:
        lo, hi = self.bounds
        left = self.base.sparsity * self.total - float(np.dot(self.ratios, self.sizes[: self.t]))
        after = self.sizes[self.t + 1:].sum()
        w = self.sizes[self.t]
        return max(lo, (left - hi * after) / w), min(hi, (left - lo * after) / w)

    def _obs(self) -> np.ndarray:
        t = min(self.t, len(self.units) - 1)
        unit = self.units[t]
        used = float(np.dot(self.ratios, self.sizes[: self.t])) / self.total
        needed = self._needed()
        lo, hi = self._range() if self.t < len(self.units) else (0.0, 0.0)
        prev = self.ratios[-1] if self.ratios else self.base.sparsity
        head = [t / max(len(self.units) - 1, 1), *unit.kind, unit.size / self.sizes.max(), used, needed, lo, hi, prev]
        return np.concatenate([np.array(head, dtype=np.float32), self.features[t]])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t, self.ratios, self.damages, self.last_policy = 0, [], [], None
        if self.damage is not None:
            self.damage.reset()
        return self._obs(), {}

    def step(self, action):
        lo, hi = self._range()
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        ratio = min(max(self._needed() + self.span * a, lo), hi)
        ratio = min(max(ratio, self.bounds[0]), self.bounds[1])  # float round-off at the last unit
        unit = self.units[self.t]
        damage = self.damage.step(unit, ratio) if self.damage is not None else 0.0
        reward = -self.step_weight * damage
        self.ratios.append(ratio)
        self.damages.append(damage)
        self.t += 1
        info = {"ratio": ratio, "damage": damage}
        done = self.t == len(self.units)
        if done:
            self.last_policy = self.policy()
            loss = self.final_loss(self.last_policy)
            reward -= self.final_weight * loss
            info["loss"] = loss
        return self._obs(), float(reward), done, False, info

    def policy(self) -> Policy:
        """The finished allocation, projected onto the target exactly at linear granularity."""
        raw = [[0.0] * len(s) for s in self.block_sizes]
        index = {name: i for s in self.block_sizes for i, name in enumerate(s)}
        for unit, r in zip(self.units, self.ratios):
            for name in unit.names:
                raw[unit.block][index[name]] = r
        return explicit_policy(self.base, raw, self.block_sizes, self.bounds)
