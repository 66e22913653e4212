"""Where jobs run: one interface, two executors.

The scheduler and the validator hand ``ProxyJob``s and ``ValidationJob``s (``autoprune.messages``)
to an ``Executor`` and collect (job, result) pairs from ``wait``; they never learn where the model
is. ``WorkerPool`` (``search.pool``) runs them on Ray actors that each hold the model and its
statistics; ``InProcessExecutor`` runs them one at a time on a ``ProxyWorker`` in this process,
for tests and benchmarks, with exactly the worker code the pool runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque

from autoprune.errors import UserError
from autoprune.messages import Job, ProxyResult, ValidationResult
from autoprune.pruning.policy import Policy

Result = tuple[ProxyResult, ...] | ValidationResult  # a ProxyJob's, one per candidate; a ValidationJob's


class Executor(ABC):
    """Runs jobs where the model is. ``info``: what the workers report once ready (``block_sizes``,
    ``max_batches``, ``per_forward``, ``window_seconds``)."""

    info: dict
    start_seconds: float = 0.0  # what starting (or replacing) a worker costs
    retried: int = 0  # jobs run again after their worker died
    replaced: int = 0  # workers replaced

    @property
    @abstractmethod
    def free(self) -> int:
        """Jobs that would start at once if submitted now."""

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Queue ``job``; it runs when a worker is free."""

    @abstractmethod
    def wait(self, timeout: float) -> list[tuple[Job, Result]]:
        """The jobs finished within ``timeout`` seconds (maybe none), each with its result; a job
        that raised has its ``failed`` result."""

    @abstractmethod
    def abandon(self, replace: bool = True) -> list[Job]:
        """Forget queued and running jobs (their workers are stopped, and with ``replace``
        started afresh); the jobs forgotten."""

    @abstractmethod
    def damage(self, policy: Policy):
        """A block-damage oracle (``rl_env.Damage``) for allocations of ``policy``'s metric, with
        ``error`` None, or why there is none in ``error``; ``close()`` frees it."""

    @abstractmethod
    def block_ratios(self, policy: Policy, allocations: list[str]) -> dict[str, list[float]]:
        """Per-block ratios of ``policy``'s target under each named allocation (OWL, AlphaPruning)."""


class LocalDamage:
    """``ProxyWorker``'s block damage, called in this process (``RemoteDamage``'s twin)."""

    def __init__(self, worker, policy: Policy):
        self.worker = worker
        self.error = worker.damage_start(policy)

    def features(self, units):
        return self.worker.damage("features", units)

    def reset(self) -> None:
        self.worker.damage("reset")

    def step(self, unit, ratio: float) -> float:
        return self.worker.damage("step", unit, ratio)

    def close(self) -> None:
        self.worker.damage_stop()


class InProcessExecutor(Executor):
    """One ``ProxyWorker`` in this process; ``wait`` runs the next queued job to its end."""

    def __init__(self, worker):
        info = worker.ready()
        if info["error"]:
            raise UserError(info["error"])
        self.worker, self.info = worker, info
        self.queue: deque[Job] = deque()

    @classmethod
    def from_spec(cls, spec) -> "InProcessExecutor":
        from autoprune.search.workers import ProxyWorker

        return cls(ProxyWorker(spec))

    @property
    def free(self) -> int:
        return 0 if self.queue else 1

    def submit(self, job: Job) -> None:
        self.queue.append(job)

    def wait(self, timeout: float) -> list[tuple[Job, Result]]:
        if not self.queue:
            return []
        job = self.queue.popleft()
        try:
            return [(job, self.worker.run(job))]
        except (RuntimeError, ValueError, UserError) as e:
            return [(job, job.failed(f"{type(e).__name__}: {e}"[:500]))]

    def abandon(self, replace: bool = True) -> list[Job]:
        jobs = list(self.queue)
        self.queue.clear()
        return jobs

    def damage(self, policy: Policy) -> LocalDamage:
        return LocalDamage(self.worker, policy)

    def block_ratios(self, policy: Policy, allocations: list[str]) -> dict[str, list[float]]:
        return self.worker.block_ratios(policy, allocations)
