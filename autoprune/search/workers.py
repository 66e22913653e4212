"""Ray workers: each actor loads the model and its calibration statistics once, then evaluates
many candidates; a ``WorkerPool`` spreads jobs over them, retries the job of a worker that dies
elsewhere and replaces the worker.
"""

from __future__ import annotations

import copy
import os
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from autoprune.errors import UserError

# environment a worker needs to find models and data, also on a cluster it joins
_FORWARDED_ENV = ("AUTOPRUNE_DATA_DIR", "AUTOPRUNE_CACHE", "HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_DISABLE_PROGRESS_BARS")


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker loads once: the model, calibration statistics, proxy and eval windows."""

    model: str
    calib: str = "tinystories:0-499"
    calib_windows: int = 64
    proxy_windows: int = 16
    eval: str = "tinystories:500-999"
    eval_windows: int | None = 128
    seqlen: int = 256
    batch_size: int = 8
    objective: str = "kl"
    gradients: bool = True  # G for metric expressions that use it
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 1


class ProxyWorker:
    """The actor body (wrapped by ``ray.remote`` in ``WorkerPool``)."""

    def __init__(self, spec: dict):
        self.error: str | None = None
        try:
            self._setup(WorkerSpec(**spec))
        except UserError as e:  # reported by ready(); a traceback would hide the one-line cause
            self.error = str(e)

    def _setup(self, spec: WorkerSpec) -> None:
        import torch

        from autoprune.evaluation.proxy import ProxyEvaluator
        from autoprune.jobs.common import calibration_windows
        from autoprune.models import load_model
        from autoprune.pruning.engine import collect_stats

        torch.set_num_threads(max(1, spec.threads))
        self.spec = spec
        self.lm = load_model(spec.model, spec.dtype, spec.device)
        self.calib = calibration_windows(self.lm.tokenizer, spec.calib, spec.calib_windows, spec.seqlen, spec.seed)
        stats = collect_stats(self.lm.model, self.calib, gradients=spec.gradients, batch_size=spec.batch_size,
                              progress=False)
        # proxy windows: a second draw from the calibration set, apart from the statistics' windows
        proxy = calibration_windows(self.lm.tokenizer, spec.calib, spec.proxy_windows, spec.seqlen, spec.seed + 1)
        self.evaluator = ProxyEvaluator(self.lm.model, stats, proxy, spec.objective, spec.batch_size)
        self._eval_windows = None
        self._ratio = None  # RatioProxy of the metric whose allocations are being searched

    def ready(self) -> dict:
        """{"error"} when set-up failed, else {"pid", "block_sizes", "max_batches"}."""
        if self.error is not None:
            return {"error": self.error}
        from autoprune.models import decoder_blocks, prunable_linears

        _, blocks = decoder_blocks(self.lm.model)
        sizes = [{n: lin.weight.numel() for n, lin in prunable_linears(b).items()} for b in blocks]
        return {"error": None, "pid": os.getpid(), "block_sizes": sizes, "max_batches": self.evaluator.max_batches}

    def evaluate(self, policy: dict, batches: int | None = None) -> dict:
        """Proxy-evaluate one policy. Explicit allocations of one metric go through a
        ``RatioProxy`` (rows ranked once, each candidate a threshold lookup and one forward)."""
        from autoprune.evaluation.ratio_proxy import RatioProxy
        from autoprune.pruning.policy import Policy

        p = Policy.from_dict(policy)
        usable = p.allocation == "explicit" and p.nm is None and p.update == "none"
        if usable and self.evaluator.check_scores(p.metric) is None:
            if self._ratio is None or not self._ratio.matches(p):
                self._ratio = None  # free the previous metric's ranks first
                try:
                    self._ratio = RatioProxy(self.evaluator, p, progress=False)
                except (RuntimeError, ValueError, UserError):
                    return asdict(self.evaluator.evaluate(p, batches))  # reports the error itself
            return asdict(self._ratio.evaluate(p, batches))
        return asdict(self.evaluator.evaluate(p, batches))

    def validate(self, policy: dict | None, save_to: str | None = None) -> dict:
        """Full protocol on a copy of the dense model: sequential pruning with the calibration
        windows, then perplexity on the eval windows. ``policy`` None measures the dense model."""
        from autoprune.evaluation import perplexity
        from autoprune.jobs.common import evaluation_windows
        from autoprune.pruning.engine import model_sparsity, prune_sequential
        from autoprune.pruning.policy import Policy

        t0 = time.perf_counter()
        if self._eval_windows is None:
            s = self.spec
            self._eval_windows = evaluation_windows(self.lm.tokenizer, s.eval, s.seqlen, s.eval_windows)
        model = copy.deepcopy(self.lm.model)
        ratios: list[float] = []
        if policy is not None:
            ratios = prune_sequential(model, Policy.from_dict(policy), self.calib, self.spec.batch_size,
                                      progress=False).block_ratios
        res = perplexity(model, self._eval_windows, self.spec.batch_size)
        if save_to is not None:
            Path(save_to).mkdir(parents=True, exist_ok=True)
            model.save_pretrained(save_to)
            self.lm.tokenizer.save_pretrained(save_to)
        return {"perplexity": res.perplexity, "tokens": res.tokens, "sparsity": model_sparsity(model)[0],
                "block_ratios": [float(r) for r in ratios], "seconds": time.perf_counter() - t0}


@dataclass
class Job:
    key: object  # the caller's handle for this job
    method: str  # "evaluate" or "validate"
    args: tuple
    attempts: int = 0


class WorkerPool:
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
        self.queue: deque[Job] = deque()
        self.running: dict = {}  # object ref -> (actor, job)
        self.replaced = 0
        self.retried = 0
        self.size = n
        self.actors = [self._cls.remote(asdict(spec)) for _ in range(n)]
        self.idle = list(self.actors)
        infos = ray.get([a.ready.remote() for a in self.actors])
        errors = [i["error"] for i in infos if i["error"]]
        if errors:
            raise UserError(errors[0])
        self.info = infos[0]
        self.pids = [i["pid"] for i in infos]

    @property
    def free(self) -> int:
        """Workers with nothing running and nothing queued for them."""
        return max(0, len(self.idle) - len(self.queue))

    def submit(self, key, method: str, *args) -> None:
        self.queue.append(Job(key, method, args))
        self._dispatch()

    def _dispatch(self) -> None:
        while self.queue and self.idle:
            job, actor = self.queue.popleft(), self.idle.pop(0)
            job.attempts += 1
            self.running[getattr(actor, job.method).remote(*job.args)] = (actor, job)

    def wait(self, timeout: float) -> list[tuple[object, dict]]:
        """(key, result) of the jobs finished within ``timeout`` seconds (maybe none)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        if not self.running:
            return []
        ready, rest = ray.wait(list(self.running), num_returns=1, timeout=max(0.0, timeout))
        if ready and rest:  # whatever else has finished too, without waiting
            ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        done = []
        for ref in ready:
            actor, job = self.running.pop(ref)
            try:
                done.append((job.key, ray.get(ref)))
                self.idle.append(actor)
            except RayActorError:
                self._replace(actor, job)
            except RayTaskError as e:  # the job raised: its result is the error, the worker lives on
                done.append((job.key, {"error": f"{type(e.cause).__name__}: {e.cause}"[:500]}))
                self.idle.append(actor)
        self._dispatch()
        return done

    def _replace(self, dead, job: Job) -> None:
        """A new actor for a dead one; its job is retried first (on whichever worker is idle)."""
        self.replaced += 1
        fresh = self._cls.remote(asdict(self.spec))
        self.actors[self.actors.index(dead)] = fresh
        self.idle.append(fresh)
        if job.attempts >= self.max_attempts:
            raise RuntimeError(f"a job failed on {job.attempts} workers in a row; giving up")
        self.retried += 1
        self.queue.appendleft(job)

    def abandon(self, replace: bool = True) -> list[object]:
        """Forget queued and running jobs; their workers are killed and, with ``replace``,
        replaced by fresh ones. Returns the jobs' keys."""
        import ray

        keys = [j.key for j in self.queue] + [job.key for _, job in self.running.values()]
        self.queue.clear()
        for ref, (actor, _) in list(self.running.items()):
            ray.kill(actor)
            if replace:
                fresh = self._cls.remote(asdict(self.spec))
                self.actors[self.actors.index(actor)] = fresh
                self.idle.append(fresh)
            else:
                self.actors.remove(actor)
        self.running.clear()
        return keys

    def refill(self) -> None:
        """Start workers again up to the pool's size (after ``abandon(replace=False)``)."""
        while len(self.actors) < self.size:
            fresh = self._cls.remote(asdict(self.spec))
            self.actors.append(fresh)
            self.idle.append(fresh)
