"""An RL agent (stable-baselines3 PPO, SAC or DDPG) that allocates sparsity layer by layer.

The agent trains on ``AllocationEnv`` in a background thread; ``ask``/``tell`` invert its
control: when an episode ends, the finished allocation becomes a ``Candidate`` and the
agent waits until ``tell`` hands back its proxy loss, which is the episode's final reward.

Per-step rewards need the model (block-local damage from cached hidden states), which a
strategy never holds: the evaluator side passes a ``Damage`` oracle as ``damage``, a
``BlockDamage`` next to the model (the benchmark) or a ``RemoteDamage`` that calls one on a Ray
worker (``autoprune search``). Each episode's step damages go out in its candidate's tag.
Without an oracle, rewards come only at the end of the episode, as in AMC.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

from autoprune.errors import UserError
from autoprune.evaluation.proxy import ProxyResult
from autoprune.pruning.policy import Policy
from autoprune.search.base import Candidate, SearchContext, Strategy

ALGORITHMS = ("ppo", "sac", "ddpg")
_KEYS = {"algorithm", "unit", "episodes", "bounds", "span", "step_weight", "final_weight", "loss_cap", "agent"}


@dataclass(frozen=True)
class RLConfig:
    algorithm: str = "ppo"
    unit: str = "block"  # block | linear: what one step allocates
    episodes: int | None = 100  # None: until the allocation phase's deadline
    bounds: tuple[float, float] = (0.0, 0.95)
    span: float = 0.3  # how far one action may move a unit from the average ratio still needed
    step_weight: float = 10.0
    final_weight: float = 1.0
    loss_cap: float = 20.0  # a failed or exploding candidate's final loss
    agent: dict = field(default_factory=dict)  # keyword arguments of the stable-baselines3 algorithm

    @classmethod
    def from_dict(cls, d: dict) -> "RLConfig":
        if not isinstance(d, dict):
            raise UserError("the RL search space must be a mapping")
        unknown = sorted(set(d) - _KEYS)
        if unknown:
            raise UserError(f"RL space: unknown keys {', '.join(map(str, unknown))}")
        if d.get("algorithm", "ppo") not in ALGORITHMS:
            raise UserError(f"RL space: unknown algorithm {d.get('algorithm')!r} (choose {', '.join(ALGORITHMS)})")
        episodes = d.get("episodes", 100)
        if episodes is not None and (not isinstance(episodes, int) or isinstance(episodes, bool) or episodes < 1):
            raise UserError("RL space: episodes must be a positive integer (or null)")
        bounds = d.get("bounds", [0.0, 0.95])
        if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2 and 0 <= bounds[0] <= bounds[1] < 1):
            raise UserError("RL space: bounds must be [low, high] within [0, 1)")
        for key in ("span", "step_weight", "final_weight", "loss_cap"):
            if not isinstance(d.get(key, 1.0), (int, float)) or d.get(key, 1.0) < 0:
                raise UserError(f"RL space: {key} must be a non-negative number")
        if not isinstance(d.get("agent", {}), dict):
            raise UserError("RL space: agent must be a mapping of stable-baselines3 arguments")
        return cls(d.get("algorithm", "ppo"), d.get("unit", "block"), episodes, (float(bounds[0]), float(bounds[1])),
                   float(d.get("span", 0.3)), float(d.get("step_weight", 10.0)), float(d.get("final_weight", 1.0)),
                   float(d.get("loss_cap", 20.0)), dict(d.get("agent", {})))

    @property
    def limit(self) -> int:
        """Episodes to run: ``episodes``, or without a cap as many as the phase's time allows."""
        return self.episodes if self.episodes is not None else 10**9


class _BudgetSpent(Exception):
    pass


class _Guard:
    """The damage oracle, refusing further steps once the episode budget is spent."""

    def __init__(self, damage, spent):
        self.damage, self.spent = damage, spent

    def features(self, units):
        return self.damage.features(units)

    def reset(self):
        self.damage.reset()

    def step(self, unit, ratio):
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

    def __init__(self, context: SearchContext, space: dict, damage=None):
        from autoprune.search.rl_env import AllocationEnv, make_units

        self.context = context
        self.config = cfg = RLConfig.from_dict(space)
        units = make_units(context.block_sizes, cfg.unit)
        self._asked = self._told = 0
        guard = _Guard(damage, lambda: self._asked >= cfg.limit) if damage is not None else None
        self.env = AllocationEnv(context.base_policy, context.block_sizes, units, self._final_loss, guard,
                                 cfg.bounds, cfg.step_weight, cfg.final_weight, cfg.span)
        self.agent = make_agent(cfg.algorithm, self.env, context.seed, len(units), cfg.agent)
        self._out: queue.Queue = queue.Queue()
        self._in: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pending: Candidate | None = None  # the episode's allocation, waiting for its result
        self._best: tuple[Policy, float] | None = None
        self.history: list[float] = []  # proxy loss of every episode, in order

    def _final_loss(self, policy: Policy) -> float:
        """Runs in the learner thread: hand the finished allocation out and wait for its loss."""
        if self._asked >= self.config.limit:
            raise _BudgetSpent
        self._asked += 1
        self._out.put(Candidate(policy, None, {"episode": self._asked, "damages": list(self.env.damages)}))
        result: ProxyResult = self._in.get()
        return min(result.loss, self.config.loss_cap) if result.ok else self.config.loss_cap

    def _learn(self) -> None:
        steps = 10 * self.config.limit * len(self.env.units)  # the episode budget stops it first
        try:
            self.agent.learn(total_timesteps=steps)
        except _BudgetSpent:
            pass
        except BaseException as e:  # surfaced to the driver by ask()
            self._out.put(e)
        finally:
            self._out.put(None)

    def ask(self, n: int) -> list[Candidate]:
        if self._told >= self.config.limit or n < 1 or self._pending is not None:
            return []  # one episode at a time: the agent waits for the last one's reward
        if self._thread is None:
            self._thread = threading.Thread(target=self._learn, name="rl-agent", daemon=True)
            self._thread.start()
        item = self._out.get()
        if isinstance(item, BaseException):
            raise item
        self._pending = item
        return [] if item is None else [item]

    def tell(self, candidate: Candidate, result: ProxyResult) -> None:
        if candidate is not self._pending and candidate != self._pending:
            return  # not this agent's open episode (a replay after a restart: the agent starts afresh)
        self._pending = None
        self._told += 1
        self.history.append(result.loss)
        if result.ok and (self._best is None or result.loss < self._best[1]):
            self._best = (candidate.policy, result.loss)
        self._in.put(result)
        if self._told >= self.config.limit and self._thread is not None:
            self._thread.join()  # the agent stops at the next step: no model change after this

    def done(self) -> bool:
        return self._told >= self.config.limit

    def best(self) -> tuple[Policy, float] | None:
        return self._best
