"""The search's executor on Ray: a ``WorkerPool`` of ``ProxyWorker`` actors spreads jobs over them,
retries the job of a worker that dies elsewhere and replaces the worker. A ``RemoteDamage`` gives
the RL strategy per-step rewards from a ``BlockDamage`` on one of the pool's workers.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoprune.errors import UserError
from autoprune.messages import Job, ValidationResult
from autoprune.pruning.policy import Policy
from autoprune.search.executor import Executor, Result
from autoprune.search.workers import DAMAGE_WINDOWS, ProxyWorker, WorkerSpec

if TYPE_CHECKING:
    import numpy as np

# environment a worker needs to find models and data, also on a cluster it joins
_FORWARDED_ENV = ("AUTOPRUNE_DATA_DIR", "AUTOPRUNE_CACHE", "HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_DISABLE_PROGRESS_BARS")


class RemoteDamage:
    """The RL environment's ``Damage`` oracle, on a ``BlockDamage`` that one of ``pool``'s workers
    holds: each call is one actor call, waited for (``ray.get``) by the thread stepping the agent.

    Ray runs an actor's calls one at a time in the order they were submitted, so these interleave
    with the pool's jobs on that worker, and each leaves the model dense. They bypass the pool: its
    idle and running bookkeeping only ever sees its own jobs. A worker that dies takes the
    episode's block state with it: the episode's remaining steps report no damage (counted in
    ``lost_steps``) and the next ``reset`` builds the block damage again on the pool's first
    worker, by then the pool's replacement. ``close`` (the phase is over) stops every later call.
    """

    def __init__(self, pool: WorkerPool, policy: Policy, windows: int = DAMAGE_WINDOWS):
        self.pool, self.policy, self.windows = pool, policy, windows
        self.actor = None  # the worker holding the block damage; None while it has none
        self.closed = False
        self.lost_steps = 0
        self._lock = threading.Lock()  # a call is never submitted after close() told the worker to stop
        self.error = self._start()  # why the oracle cannot give damages (None: it can)

    def _start(self) -> str | None:
        import ray
        from ray.exceptions import RayActorError

        actor = self.pool.actors[0]
        try:
            error = ray.get(actor.damage_start.remote(self.policy, self.windows))
        except RayActorError:
            return "its worker died"
        self.actor = None if error else actor
        return error

    def _call(self, method: str, *args):
        """The worker's answer; None when it has no block damage (died, not rebuilt yet) or after close."""
        import ray
        from ray.exceptions import RayActorError

        with self._lock:
            if self.closed or self.actor is None:
                return None
            ref = self.actor.damage.remote(method, *args)
        try:
            return ray.get(ref)
        except RayActorError:
            self.actor = None
            return None

    def features(self, units) -> np.ndarray:
        import numpy as np

        feats = self._call("features", units)
        return np.zeros((len(units), 0), dtype=np.float32) if feats is None else feats

    def reset(self) -> None:
        if self.actor is None and not self.closed:
            self._start()
        self._call("reset")

    def step(self, unit, ratio: float) -> float:
        damage = self._call("step", unit, ratio)
        if damage is None:
            self.lost_steps += 1
            return 0.0
        return damage

    def close(self) -> None:
        """No more calls; the worker frees the block damage's hidden states."""
        with self._lock:
            self.closed = True
            if self.actor is not None:
                self.actor.damage_stop.remote()  # not waited for: runs after any call in flight


@dataclass
class _Task:
    job: Job
    attempts: int = 0


class WorkerPool(Executor):
    """``n`` ``ProxyWorker`` actors; ``submit`` jobs, ``wait`` for finished ones.

    A worker that dies (killed, out of memory, node lost) is replaced by a new actor and its
    job goes back to the front of the queue, up to ``max_attempts`` times.
    """

    def __init__(self, spec: WorkerSpec, n: int, cpus: float = 1, gpus: float = 0, max_attempts: int = 3,
                 forward_env: bool = False):
        import ray

        # a local cluster inherits this process's environment; a joined one is told it
        env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ} if forward_env else {}
        self._cls = ray.remote(ProxyWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0,
                                                     runtime_env={"env_vars": env} if env else None)
        self.spec = spec
        self.max_attempts = max_attempts
        self.queue: deque[_Task] = deque()
        self.running: dict = {}  # object ref -> (actor, task)
        self.replaced = 0
        self.retried = 0
        self.size = n
        t0 = time.monotonic()
        self.actors = [self._cls.remote(spec) for _ in range(n)]
        self.idle = list(self.actors)
        infos = ray.get([a.ready.remote() for a in self.actors])
        self.start_seconds = time.monotonic() - t0  # what replacing a worker costs
        errors = [i["error"] for i in infos if i["error"]]
        if errors:
            raise UserError(errors[0])
        self.info = infos[0]
        self.pids = [i["pid"] for i in infos]
        self.placement = [{k: i[k] for k in ("pid", "host", "node", "device")} for i in infos]

    def damage(self, policy: Policy) -> RemoteDamage:
        """A block-damage oracle for allocations of ``policy``'s metric on one of these workers."""
        return RemoteDamage(self, policy)

    def block_ratios(self, policy: Policy, allocations: list[str]) -> dict[str, list[float]]:
        """``ProxyWorker.block_ratios`` on the first worker (a direct call: jobs are not involved);
        none when that worker has died (its next job finds it dead and the pool replaces it)."""
        import ray
        from ray.exceptions import RayActorError

        try:
            return ray.get(self.actors[0].block_ratios.remote(policy, allocations))
        except RayActorError:
            return {}

    def save(self, policy: Policy, path: Path) -> ValidationResult:
        """Prune ``policy`` by the full protocol on a worker and save the model to ``path``."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        self.refill()
        try:
            return ray.get(self.actors[0].validate.remote(policy, str(path)))
        except RayTaskError as e:
            return ValidationResult.failed(f"{type(e.cause).__name__}: {e.cause}"[:500])
        except RayActorError:
            return ValidationResult.failed("the worker died")

    @property
    def free(self) -> int:
        """Workers with nothing running and nothing queued for them."""
        return max(0, len(self.idle) - len(self.queue))

    def submit(self, job: Job) -> None:
        self.queue.append(_Task(job))
        self._dispatch()

    def _dispatch(self) -> None:
        while self.queue and self.idle:
            task, actor = self.queue.popleft(), self.idle.pop(0)
            task.attempts += 1
            self.running[actor.run.remote(task.job)] = (actor, task)

    def wait(self, timeout: float) -> list[tuple[Job, Result]]:
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        if not self.running:
            return []
        ready, rest = ray.wait(list(self.running), num_returns=1, timeout=max(0.0, timeout))
        if ready and rest:  # whatever else has finished too, without waiting
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        done = []
        for ref in ready:
            actor, task = self.running.pop(ref)
            try:
                done.append((task.job, ray.get(ref)))
                self.idle.append(actor)
            except RayActorError:
                self._replace(actor, task)
            except RayTaskError as e:  # the job raised: its result is the error, the worker lives on
                done.append((task.job, task.job.failed(f"{type(e.cause).__name__}: {e.cause}"[:500])))
                self.idle.append(actor)
        self._dispatch()
        return done

    def _replace(self, dead, task: _Task) -> None:
        """A new actor for a dead one; its job is retried first (on whichever worker is idle)."""
        self.replaced += 1
        fresh = self._cls.remote(self.spec)
        self.actors[self.actors.index(dead)] = fresh
        self.idle.append(fresh)
        if task.attempts >= self.max_attempts:
            raise RuntimeError(f"a job failed on {task.attempts} workers in a row; giving up")
        self.retried += 1
        self.queue.appendleft(task)

    def abandon(self, replace: bool = True) -> list[Job]:
        import ray

        jobs = [t.job for t in self.queue] + [task.job for _, task in self.running.values()]
        self.queue.clear()
        for ref, (actor, _) in list(self.running.items()):
            ray.kill(actor)
            if replace:
                fresh = self._cls.remote(self.spec)
                self.actors[self.actors.index(actor)] = fresh
                self.idle.append(fresh)
            else:
                self.actors.remove(actor)
        self.running.clear()
        return jobs

    def refill(self) -> None:
        """Start workers again up to the pool's size (after ``abandon(replace=False)``)."""
        while len(self.actors) < self.size:
            fresh = self._cls.remote(self.spec)
            self.actors.append(fresh)
            self.idle.append(fresh)
