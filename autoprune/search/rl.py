"""An RL agent (stable-baselines3 PPO, SAC or DDPG) that allocates sparsity layer by layer.

The agent trains on ``AllocationEnv`` in a background thread; ``ask``/``tell`` invert its
control: when an episode ends, the finished allocation becomes a ``Candidate`` and the
agent waits until ``tell`` hands back its proxy loss, which is the episode's final reward.

Per-step rewards need the model (block-local damage from cached hidden states), which a
strategy never holds: the evaluator side puts a ``Damage`` oracle in ``context.damage``, a
``BlockDamage`` next to the model (the benchmark) or a ``RemoteDamage`` that calls one on a Ray
worker (``autoprune search``). Each episode's step damages go out in its candidate's tag.
Without an oracle, rewards come only at the end of the episode, as in AMC.

Resume: the agent's weights, optimiser, rollout buffer and random streams are not saved; what
it was told is. ``state_dict`` keeps every told episode's step damages and final reward (and
the open episode's damages); a new strategy with the same seed loaded from it replays those
episodes without evaluating anything, answering each step and episode end from the record, so
the agent is exactly where it stopped (stable-baselines3 on a CPU is deterministic given its
seed; the replayed allocations are compared with the recorded ones, ``diverged`` counts any
that differ). Replaying costs the agent's own training steps only.
"""

from __future__ import annotations

import math
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from autoprune.config import need
from autoprune.errors import UserError
from autoprune.messages import ProxyResult
from autoprune.pruning.policy import Policy
from autoprune.search.base import Candidate, SearchContext, Strategy


@dataclass(frozen=True)
class RLSpace:
    """``search_spaces/rl.yaml``; the defaults are the packaged file's (a test holds them equal)."""

    algorithm: Literal["ppo", "sac", "ddpg"] = "ppo"
    unit: Literal["block", "linear"] = "block"  # what one step allocates
    episodes: int | None = None  # None: until the allocation phase's deadline
    bounds: tuple[float, float] = (0.0, 0.95)
    span: float = 0.3  # how far one action may move a unit from the average ratio still needed
    step_weight: float = 10.0
    final_weight: float = 1.0
    loss_cap: float = 20.0  # a failed or exploding candidate's final loss
    agent: dict = field(default_factory=dict)  # keyword arguments of the stable-baselines3 algorithm

    def __post_init__(self) -> None:
        need(self.episodes is None or self.episodes >= 1, "episodes must be a positive integer (or null)")
        need(0 <= self.bounds[0] <= self.bounds[1] < 1, "bounds must be [low, high] within [0, 1)")
        for key in ("span", "step_weight", "final_weight", "loss_cap"):
            need(getattr(self, key) >= 0, f"{key} must be a non-negative number")

    @property
    def limit(self) -> int:
        """Episodes to run: ``episodes``, or without a cap as many as the phase's time allows."""
        return self.episodes if self.episodes is not None else 10**9


class _BudgetSpent(Exception):
    pass


class _Steps:
    """The damage oracle as the environment sees it: recorded damages first (a replay), then the
    live oracle, which refuses further steps once the episode budget is spent."""

    def __init__(self, damage, spent, script: deque):
        self.damage, self.spent, self.script = damage, spent, script

    def features(self, units):
        return self.damage.features(units)

    def reset(self):
        if not self.script:
            self.damage.reset()

    def step(self, unit, ratio):
        if self.script:
            return self.script.popleft()
        if self.spent():
            raise _BudgetSpent
        return self.damage.step(unit, ratio)


def make_agent(algorithm: str, env, seed: int, n_units: int, kwargs: dict):
    """A stable-baselines3 agent with defaults sized to episodes of ``n_units`` steps."""
    import stable_baselines3 as sb3

    if algorithm == "ppo":
        defaults = {"n_steps": 8 * n_units, "batch_size": 4 * n_units, "n_epochs": 10, "learning_rate": 1e-3}
    else:
        defaults = {"learning_starts": 10 * n_units, "train_freq": (1, "episode"), "learning_rate": 1e-3}
    cls = {"ppo": sb3.PPO, "sac": sb3.SAC, "ddpg": sb3.DDPG}[algorithm]
    try:
        return cls("MlpPolicy", env, seed=seed, verbose=0, device="cpu", **{**defaults, **kwargs})
    except TypeError as e:
        raise UserError(f"RL space: invalid agent arguments for {algorithm}: {e}") from None


class RLStrategy(Strategy):
    name = "rl"
    space_type = RLSpace

    def __init__(self, context: SearchContext, space: dict | RLSpace):
        from autoprune.search.rl_env import AllocationEnv, make_units

        self.context = context
        self.config = cfg = self.read_space(space)
        units = make_units(context.block_sizes, cfg.unit)
        self.fixed = context.base_policy.nm is not None  # an N:M pattern fixes every ratio: done at once
        self._asked = self._told = 0
        self._script: deque[float] = deque()  # recorded step damages still to replay
        self._replay: deque[dict] = deque()  # recorded episodes still to replay
        oracle = None if self.fixed else context.damage
        steps = _Steps(oracle, lambda: self._asked >= cfg.limit, self._script) if oracle is not None else None
        self.env = self.agent = None
        if not self.fixed:
            self.env = AllocationEnv(context.base_policy, context.block_sizes, units, self._final_loss, steps,
                                     cfg.bounds, cfg.step_weight, cfg.final_weight, cfg.span)
            self.agent = make_agent(cfg.algorithm, self.env, context.seed, len(units), cfg.agent)
        self._out: queue.Queue = queue.Queue()
        self._in: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pending: Candidate | None = None  # the episode's allocation, waiting for its result
        self._best: tuple[Policy, float] | None = None
        self.history: list[float] = []  # proxy loss of every episode, in order
        self.episodes: list[dict] = []  # per told episode: {"ratios", "damages", "reward_loss"}
        self.diverged = 0  # replayed episodes whose allocation differs from the recorded one
        self._open: dict = {}  # the open episode's {"ratios", "damages"}

    def _final_loss(self, policy: Policy) -> float:
        """Runs in the learner thread: hand the finished allocation out and wait for its loss
        (or, replaying, answer from the record)."""
        if self._asked >= self.config.limit:
            raise _BudgetSpent
        self._asked += 1
        if self._replay:
            told = self._replay.popleft()
            self.diverged += told["ratios"] != list(self.env.ratios)
            return told["reward_loss"]
        self._open = {"ratios": list(self.env.ratios), "damages": list(self.env.damages)}
        self._out.put(Candidate(policy, None, {"episode": self._asked, "damages": self._open["damages"]}))
        result: ProxyResult = self._in.get()
        return self._reward_loss(result)

    def _reward_loss(self, result: ProxyResult) -> float:
        return min(result.loss, self.config.loss_cap) if result.ok else self.config.loss_cap

    def _learn(self) -> None:
        import torch

        # small networks, one thread: torch's thread count is per thread and its results depend on it,
        # so it is fixed here, and a replayed agent computes exactly as the run it replays did
        torch.set_num_threads(1)
        steps = 10 * self.config.limit * len(self.env.units)  # the episode budget stops it first
        try:
            self.agent.learn(total_timesteps=steps)
        except _BudgetSpent:
            pass
        except BaseException as e:  # surfaced to the driver by ask()
            self._out.put(e)
        finally:
            self._out.put(None)

    def _next(self) -> Candidate | None:
        """Start the agent if need be and wait for its next finished episode."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._learn, name="rl-agent", daemon=True)
            self._thread.start()
        item = self._out.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def ask(self, n: int) -> list[Candidate]:
        if self.done() or n < 1 or self._pending is not None:
            return []  # one episode at a time: the agent waits for the last one's reward
        self._pending = self._next()
        return [] if self._pending is None else [self._pending]

    def tell(self, candidate: Candidate, result: ProxyResult) -> None:
        if self._pending is None or candidate != self._pending:
            return  # not this agent's open episode (a replay of one it was told already)
        self.episodes.append({**self._open, "reward_loss": self._reward_loss(result)})
        self._pending = None
        self._told += 1
        self.history.append(result.loss)
        if result.ok and (self._best is None or result.loss < self._best[1]):
            self._best = (candidate.policy, result.loss)
        self._in.put(result)
        if self._told >= self.config.limit and self._thread is not None:
            self._thread.join()  # the agent stops at the next step: no model change after this

    def done(self) -> bool:
        return self.fixed or self._told >= self.config.limit

    def best(self) -> tuple[Policy, float] | None:
        return self._best

    def state_dict(self) -> dict:
        return {"episodes": self.episodes, "pending": self._open if self._pending is not None else None,
                "diverged": self.diverged,
                "history": [x if math.isfinite(x) else None for x in self.history],
                "best": None if self._best is None else [self._best[0].to_dict(), self._best[1]]}

    def load_state_dict(self, state: dict) -> None:
        """Replay the recorded episodes (nothing is evaluated); an episode that was open is asked
        again by the agent itself, so its result may be told at once."""
        if self._thread is not None:
            raise RuntimeError("load_state_dict on an RL strategy that has started")
        self.episodes = [dict(e) for e in state.get("episodes", [])]
        self.history = [math.inf if x is None else float(x) for x in state.get("history", [])]
        self._best = None if state.get("best") is None else (Policy.from_dict(state["best"][0]), float(state["best"][1]))
        self.diverged = int(state.get("diverged", 0))
        self._told = len(self.episodes)
        self._replay.extend(self.episodes)
        if self.fixed:
            return
        if self.env.damage is not None:
            self._script.extend(d for e in self.episodes for d in e["damages"])
        pending = state.get("pending")
        if pending is not None and self._told < self.config.limit:
            if self.env.damage is not None:
                self._script.extend(pending["damages"])
            self._pending = self._next()
            if self._pending is not None:
                self.diverged += self._open["ratios"] != pending["ratios"]
