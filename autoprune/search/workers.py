"""The search's worker: it loads the model and its calibration statistics once, then runs many
jobs (``autoprune.messages``: typed jobs in, typed results out). The same body runs as a Ray
actor in a ``WorkerPool`` (``search.pool``) or in this process (``search.executor``).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoprune.errors import UserError
from autoprune.messages import Job, ProxyResult, ValidationJob, ValidationResult, policy_key
from autoprune.pruning.policy import Policy
from autoprune.search.executor import Result
from autoprune.search.journal import write_json_atomic

if TYPE_CHECKING:
    from autoprune.evaluation.ratio_proxy import RatioProxy

PRUNED_KEPT = 4  # validated models a worker keeps (prunable weights only) for their reports
DAMAGE_WINDOWS = 4  # proxy windows the RL block damage forwards (hidden states of every block are cached)


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker loads once: the model, calibration statistics, proxy and eval windows."""

    model: str
    calib: str = "tinystories:0-499"
    calib_windows: int = 64
    proxy_windows: int = 16
    eval: str = "tinystories:500-999"
    eval_windows: int | None = 128
    select: str = "tinystories:0-499"  # the winner is chosen here (see jobs.common.selection_windows)
    select_windows: int = 32
    seqlen: int = 256
    batch_size: int = 8
    proxy_batch: int = 2  # windows per proxy batch: the unit of proxy fidelity (Candidate.batches)
    objective: str = "kl"
    # G and the Hessians at start-up; else the evaluator collects them when a candidate first needs them
    gradients: bool = True
    hessian: bool = False
    reference_top: int | None = 256  # dense tokens kept per position for the KL (None: all)
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    threads: int = 1
    gpus: float = 0  # above 1: the model is spread over the worker's GPUs (accelerate's device map)
    progress: str | None = None  # a JSON file the start-up steps are written to, for the live view


def _by_ratio(policy: Policy) -> bool:
    """Explicit allocations of one metric, with no weight update, can go through a ``RatioProxy``."""
    return policy.allocation == "explicit" and policy.nm is None and policy.update == "none"


class ProxyWorker:
    """The actor body (wrapped by ``ray.remote`` in ``WorkerPool``)."""

    def __init__(self, spec: WorkerSpec):
        self.error: str | None = None
        try:
            self._setup(spec)
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
        t0 = time.monotonic()

        def report(step: str, done: int = 0, total: int = 0) -> None:
            try:  # best effort: on another node of a cluster the run folder may not exist
                if spec.progress:
                    write_json_atomic(Path(spec.progress), {"step": step, "done": done, "total": total,
                                                            "seconds": round(time.monotonic() - t0, 1)})
            except OSError:
                pass

        report("loading the model")
        self.lm = load_model(spec.model, spec.dtype, spec.device, spread=spec.gpus > 1)
        self.calib = calibration_windows(self.lm.tokenizer, spec.calib, spec.calib_windows, spec.seqlen, spec.seed)
        stats = collect_stats(self.lm.model, self.calib, hessian=spec.hessian, gradients=spec.gradients,
                              batch_size=spec.batch_size, progress=False, report=report)
        # proxy windows: a second draw from the calibration set, apart from the statistics' windows
        proxy = calibration_windows(self.lm.tokenizer, spec.calib, spec.proxy_windows, spec.seqlen, spec.seed + 1)
        report("dense reference")
        t1 = time.perf_counter()
        self.evaluator = ProxyEvaluator(self.lm.model, stats, proxy, spec.objective, spec.batch_size,
                                        proxy_batch=spec.proxy_batch, calib_windows=self.calib,
                                        reference_top=spec.reference_top)
        report("ready")
        self.window_seconds = (time.perf_counter() - t1) / len(proxy)  # one dense forward of one window
        self._windows: dict[str, torch.Tensor] = {}  # "select" and "eval", made when first needed
        self._pruned: dict[str, dict] = {}  # the last validated policies' pruned weights, for their reports
        self._ratio = None  # RatioProxy of the metric whose allocations are being searched
        self._damage = None  # BlockDamage for the RL strategy (see damage_start)

    def ready(self) -> dict:
        """{"error"} when set-up failed, else {"pid", "block_sizes", "max_batches", "per_forward"}."""
        if self.error is not None:
            return {"error": self.error}
        from autoprune.models import decoder_blocks, prunable_linears

        import socket

        import ray

        _, blocks = decoder_blocks(self.lm.model)
        sizes = [{n: lin.weight.numel() for n, lin in prunable_linears(b).items()} for b in blocks]
        devices = sorted({str(p.device) for p in self.lm.model.parameters()})
        return {"error": None, "pid": os.getpid(), "block_sizes": sizes, "max_batches": self.evaluator.max_batches,
                "per_forward": self.evaluator.suggested_per_forward(), "window_seconds": self.window_seconds,
                "host": socket.gethostname(), "device": ",".join(devices),
                "node": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None}  # None: in-process

    def run(self, job: Job) -> Result:
        """A job's result: one ``ProxyResult`` per candidate of a ``ProxyJob`` (several one-shot
        candidates share their forward passes), a ``ValidationResult`` for a ``ValidationJob``."""
        if isinstance(job, ValidationJob):
            return self.validate(job.policy, None, job.split)
        if len(job.policies) == 1:
            return (self.evaluate(job.policies[0], job.batches, job.sequential),)
        return tuple(self.evaluate_many(list(job.policies), job.batches))

    def evaluate(self, policy: Policy, batches: int | None = None, sequential: bool = False) -> ProxyResult:
        """Proxy-evaluate one policy. Explicit allocations of one metric go through a
        ``RatioProxy`` (rows ranked once, each candidate a threshold lookup and one forward)."""
        if not sequential and _by_ratio(policy) and self.evaluator.check_scores(policy.metric) is None:
            try:
                return self.evaluator.take_prepared(self._ratio_proxy(policy).evaluate(policy, batches))
            except (RuntimeError, ValueError, UserError):
                pass  # evaluating from scratch reports the error itself
        return self.evaluator.evaluate(policy, batches, sequential)

    def evaluate_many(self, policies: list[Policy], batches: int | None = None) -> list[ProxyResult]:
        """One-shot ``evaluate`` of several policies, their forward passes stacked into one
        (explicit allocations still go one by one through their ``RatioProxy``)."""
        stack = [i for i, p in enumerate(policies) if not _by_ratio(p)]
        out = dict(zip(stack, self.evaluator.evaluate_many([policies[i] for i in stack], batches)))
        return [out[i] if i in out else self.evaluate(policies[i], batches) for i in range(len(policies))]

    def _ratio_proxy(self, policy: Policy) -> RatioProxy:
        """A ``RatioProxy`` for ``policy``'s metric: the current one, the block damage's, or a new one."""
        from autoprune.evaluation.ratio_proxy import RatioProxy

        if self._ratio is None or not self._ratio.matches(policy):
            if self._damage is not None and self._damage.proxy.matches(policy):
                self._ratio = self._damage.proxy
            else:
                self._ratio = None  # free the previous metric's ranks first
                self._ratio = RatioProxy(self.evaluator, policy, progress=False)
        return self._ratio

    def block_ratios(self, policy: Policy, allocations: list[str]) -> dict[str, list[float]]:
        """Per-block ratios of ``policy``'s target under each named allocation (OWL reads this
        worker's statistics); allocations the policy cannot take are left out."""
        from dataclasses import replace

        from autoprune.pruning.allocation import block_ratios
        from autoprune.pruning.engine import blocks_linears

        base, bls, out = policy, blocks_linears(self.lm.model), {}
        for name in allocations:
            try:
                p = replace(base, allocation=name, block_ratios=None, layer_ratios=None)
                out[name] = [float(r) for r in block_ratios(p, bls, self.evaluator.stats.X)]
            except UserError:
                continue
        return out

    def damage_start(self, policy: Policy, windows: int = DAMAGE_WINDOWS) -> str | None:
        """Build the ``BlockDamage`` for allocations of ``policy``'s metric on the first ``windows``
        proxy windows; why it cannot be built (None when it is)."""
        from autoprune.evaluation.block_damage import BlockDamage

        self._damage = None
        p = policy
        if p.nm is not None or p.update != "none":
            return f"block damage needs an unstructured pattern and no weight update ({p.pattern}, {p.update})"
        try:
            self._damage = BlockDamage(self._ratio_proxy(p), self.evaluator.windows[:windows], self.spec.batch_size)
        except (RuntimeError, ValueError, UserError) as e:
            return f"{type(e).__name__}: {e}"[:500]
        return None

    def damage(self, method: str, *args):
        """``BlockDamage.features``, ``reset`` or ``step``; every call leaves the model dense."""
        if self._damage is None or method not in ("features", "reset", "step"):
            raise RuntimeError(f"no block damage for {method!r} (damage_start first)")
        return getattr(self._damage, method)(*args)

    def damage_stop(self) -> None:
        """Free the block damage's cached hidden states."""
        self._damage = None

    def _split(self, split: str):
        from autoprune.jobs.common import evaluation_windows, selection_windows

        if split not in self._windows:
            s = self.spec
            if split == "eval":
                self._windows[split] = evaluation_windows(self.lm.tokenizer, s.eval, s.seqlen, s.eval_windows)
            else:
                drawn = ((s.calib_windows, s.seed), (s.proxy_windows, s.seed + 1))
                self._windows[split] = selection_windows(self.lm.tokenizer, s.select, s.select_windows, s.seqlen,
                                                         s.seed + 2, s.calib, drawn)
        return self._windows[split]

    def validate(self, policy: Policy | None, save_to: str | None = None, split: str = "select") -> ValidationResult:
        """Full protocol on a copy of the dense model: sequential pruning with the calibration
        windows, then perplexity on the ``select`` windows (where the winner is chosen) or the
        ``eval`` windows (where it is reported). ``policy`` None measures the dense model. The
        last few pruned models are kept, so a policy's report does not prune it again."""
        from autoprune.evaluation import perplexity
        from autoprune.pruning.engine import blocks_linears, model_sparsity, prune_sequential
        from autoprune.pruning.metrics import needs_gradients

        t0 = time.perf_counter()
        windows = self._split(split)
        model = copy.deepcopy(self.lm.model)
        key = policy_key(policy or {}, None)
        ratios: list[float] = []
        linears = {n: lin for bl in blocks_linears(model) for n, lin in bl.items()}
        if policy is not None and key in self._pruned:
            held = self._pruned[key]
            ratios = held["ratios"]
            for n, lin in linears.items():
                lin.weight.data.copy_(held["weights"][n])
        elif policy is not None:
            p, grads = policy, None
            if needs_gradients(p.metric):  # the dense G this worker holds (or collects once), not a new one
                self.evaluator.require(Policy(metric=p.metric))
                grads = self.evaluator.stats.grads
            ratios = prune_sequential(model, p, self.calib, self.spec.batch_size, progress=False,
                                      grads=grads).block_ratios
            if len(self._pruned) >= PRUNED_KEPT:
                del self._pruned[next(iter(self._pruned))]
            self._pruned[key] = {"ratios": ratios, "weights": {n: lin.weight.data.clone() for n, lin in linears.items()}}
        res = perplexity(model, windows, self.spec.batch_size)
        if save_to is not None:
            Path(save_to).mkdir(parents=True, exist_ok=True)
            model.save_pretrained(save_to)
            self.lm.tokenizer.save_pretrained(save_to)
        return ValidationResult(res.perplexity, time.perf_counter() - t0, res.tokens, model_sparsity(model)[0],
                                tuple(float(r) for r in ratios))
