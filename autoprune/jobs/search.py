"""``autoprune search``: spend a time budget finding a pruning policy, on Ray workers, in MLflow.

The run folder holds the config, the journal (every candidate, the source of truth), strategy
states, the best policy, plots and a summary; ``resume`` continues an interrupted search there.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from autoprune.config import Config, check_out
from autoprune.errors import UserError
from autoprune.jobs.cluster import connect_ray, probe_ray
from autoprune.jobs.common import default_select
from autoprune.jobs.run_folder import (BEST_FILE, CONFIG_FILE, JOURNAL_FILE, LOG_FILE, PROGRESS_FILE, STARTUP_FILE, SUMMARY_FILE,
                                       TRACKING_FILE, lock, log_to_file, prepare_out)
from autoprune.jobs.search_results import phase_seconds, strategy_bests, winner_row, write_results
from autoprune.pruning.policy import Policy, parse_pattern
from autoprune.search.budget import Budget, parse_budget
from autoprune.search.workers import WorkerSpec

# on resume, these options must be as the search started (they define what it searches)...
FIXED = ("model", "sparsity", "pattern", "strategies", "calib", "eval", "select", "updates", "seed", "spaces")
# ...and these may change how it goes on; any other option is the stored one
CHANGEABLE = ("budget", "workers", "ray_address", "tracking_uri", "save_model", "baselines", "per_forward", "owl_lambdas",
              "log_candidates")


@dataclass
class SearchConfig(Config):
    model: str
    budget: str = "5m"
    sparsity: float | None = None  # default 0.5; an N:M pattern fixes it
    pattern: str = "unstructured"
    strategies: str = "gp,evo"
    calib: str | None = None  # None: tinystories:0-499 for the stories models, else c4
    eval: str | None = None  # None: tinystories:500-999 after tinystories calibration, else wikitext2
    select: str | None = None  # the winner is chosen here; None: the calibration set's unused windows for
    # the stories models, else wikitext2-valid (never the eval data: that only reports)
    select_windows: int = 32
    updates: str = "none,sparsegpt,admm"  # weight updates the search may choose (evo's arms)
    calib_windows: int = 64
    proxy_windows: int = 16
    eval_windows: int | None = 128
    seqlen: int | None = None  # None: 256 for the stories models, else 2048
    batch_size: int = 8
    proxy_batch: int = 2  # windows per proxy batch, the unit of proxy fidelity in the search spaces
    per_forward: int | None = None  # one-shot candidates stacked into one forward pass; None: 1 on a CPU, more on a GPU
    objective: str = "kl"
    workers: int = 1
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0
    ray_address: str | None = None
    tracking_uri: str = "sqlite:///runs/mlflow.db"
    log_candidates: str = "top"  # nested MLflow runs: top (validated, each strategy's best, recipes), all, none
    spaces: str | None = None  # a folder of <strategy>.yaml overriding the packaged search spaces
    experiment: str | None = None  # None: autoprune/<out folder name>
    out: Path = Path("runs/search")
    top_k: int = 3
    baselines: str = "sparsegpt+owl,sparsegpt,wanda+owl,wanda"  # recipes validated beside the winner; "none"
    owl_lambdas: str = "0.05,0.1,0.15,0.2"  # OWL's lambda of the recipes, tuned on the selection split
    reference_top: int | None = 256  # dense tokens per position the KL proxy keeps (None: the whole vocabulary)
    save_model: bool = False
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        check_out(self.out)
        self.seconds = parse_budget(self.budget)
        stories = self.model.lower().startswith("stories")
        self.calib = self.calib or ("tinystories:0-499" if stories else "c4")
        self.eval = self.eval or ("tinystories:500-999" if self.calib.startswith("tinystories") else "wikitext2")
        self.select = self.select or default_select(self.calib)
        if self.select == self.eval:
            raise UserError(f"--select and --eval are both {self.eval!r}: the winner must be chosen on other data "
                            "than it is reported on")
        self.seqlen = self.seqlen or (256 if stories else 2048)
        nm = parse_pattern(self.pattern)
        implied = None if nm is None else 1 - nm[0] / nm[1]
        if implied is not None and self.sparsity is not None and abs(self.sparsity - implied) > 1e-9:
            raise UserError(f"pattern {self.pattern} fixes sparsity at {implied:g}; --sparsity {self.sparsity:g} "
                            "contradicts it")
        self.sparsity = implied if implied is not None else 0.5 if self.sparsity is None else self.sparsity
        Policy(sparsity=self.sparsity, pattern=self.pattern)  # validates both
        from autoprune.search.registry import REGISTRY

        names = self.strategy_names
        if not names or any(n not in REGISTRY for n in names):
            raise UserError(f"unknown strategies {self.strategies!r} (choose from {', '.join(REGISTRY)})")
        from autoprune.search.baselines import parse_baselines, parse_lambdas

        parse_baselines(self.baselines)
        parse_lambdas(self.owl_lambdas)
        from autoprune.pruning.policy import UPDATES

        bad = [u for u in self.update_names if u not in UPDATES]
        if bad or not self.update_names:
            raise UserError(f"unknown update {bad[0] if bad else self.updates!r} (choose from {', '.join(UPDATES)})")
        for field in ("workers", "calib_windows", "select_windows", "reference_top", "proxy_windows", "batch_size", "proxy_batch", "top_k", "per_forward"):
            if getattr(self, field) is not None and getattr(self, field) <= 0:
                raise UserError(f"{field.replace('_', '-')} must be positive, got {getattr(self, field)}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise UserError("cpus-per-worker must be positive and gpus-per-worker not negative")
        if self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            raise UserError(f"gpus-per-worker above 1 must be a whole number, got {self.gpus_per_worker:g}")
        if self.gpus_per_worker and self.ray_address is None:
            import torch

            if torch.cuda.device_count() < self.gpus_per_worker * self.workers:
                raise UserError(f"{self.workers} workers x {self.gpus_per_worker:g} GPUs need "
                                f"{self.gpus_per_worker * self.workers:g} GPUs; this machine has {torch.cuda.device_count()} "
                                "(join a cluster with --ray-address)")
        from autoprune.tracking import LOG_MODES

        if self.log_candidates not in LOG_MODES:
            raise UserError(f"unknown log-candidates {self.log_candidates!r} (choose {', '.join(LOG_MODES)})")
        self.experiment = self.experiment or f"autoprune/{self.out.resolve().name}"

    @property
    def update_names(self) -> tuple[str, ...]:
        return tuple(u.strip() for u in self.updates.split(",") if u.strip())

    @property
    def strategy_names(self) -> list[str]:
        return [s.strip() for s in self.strategies.split(",") if s.strip()]


@dataclass
class SearchResult:
    out: Path
    best: Policy
    proxy_loss: float | None
    perplexity: float | None
    candidates: dict[str, int]  # strategy -> candidates evaluated (this search, all sessions)
    validated: list[dict]
    baselines: list[dict]  # beside the winner, same protocol (see autoprune.search.baselines.report)
    select_perplexity: float | None  # the winner's, on the selection split where it was chosen
    recipe: str | None  # the recipe returned because it beat every candidate on the selection split
    phases: dict[str, float]  # seconds per phase, start-up included
    seconds: float  # wall time of this session
    retried: int
    replaced: int


def worker_spec(cfg: SearchConfig) -> WorkerSpec:
    """What each of the search's workers loads."""
    return WorkerSpec(model=cfg.model, calib=cfg.calib, calib_windows=cfg.calib_windows,
                      proxy_windows=cfg.proxy_windows, eval=cfg.eval, eval_windows=cfg.eval_windows,
                      select=cfg.select, select_windows=cfg.select_windows, reference_top=cfg.reference_top,
                      seqlen=cfg.seqlen, batch_size=cfg.batch_size, proxy_batch=cfg.proxy_batch,
                      objective=cfg.objective, gradients="gp" in cfg.strategy_names, seed=cfg.seed,
                      device=cfg.device, dtype=cfg.dtype, threads=max(1, int(cfg.cpus_per_worker)),
                      gpus=cfg.gpus_per_worker, progress=str(Path(cfg.out).resolve() / STARTUP_FILE))


















def resume_config(out: Path, given: dict) -> SearchConfig:
    """The stored config of the search in ``out``; ``given`` options may change how it runs
    (budget: the new total, workers, Ray address, tracking URI, saving the model, baselines,
    candidates per forward) but not what it searches."""
    stored = Path(out) / CONFIG_FILE
    if not stored.is_file():
        raise UserError(f"{out}: no search to resume (no {CONFIG_FILE})")
    old = SearchConfig.from_dict(json.loads(stored.read_text()))
    for k, v in given.items():
        if k in FIXED and v != getattr(old, k):
            raise UserError(f"{out} was started with {k.replace('_', '-')}={getattr(old, k)!r}, not {v!r}")
    return replace(old, **{k: v for k, v in given.items() if k in CHANGEABLE})


def search(cfg: SearchConfig, resume: bool = False, on_update: Callable[[dict], None] | None = None,
           started: float | None = None) -> SearchResult:
    """Run (or with ``resume`` continue) the search; ``started``: the monotonic clock reading the
    budget counts from (default: now), so a command can count its own start-up too."""
    started = time.monotonic() if started is None else started
    from autoprune.search import spec as search_spec
    from autoprune.search.events import Done
    from autoprune.search.journal import Journal, read_json, write_json_atomic
    from autoprune.tracking import check_uri

    fresh = None if resume else search_spec.resolve(cfg.spaces)  # a bad space file: refused before anything is made
    if fresh is not None:
        search_spec.check(fresh, cfg.strategy_names)
    check_uri(cfg.tracking_uri)  # fail fast, before anything is written or started
    probe_ray(cfg.ray_address)
    cfg = prepare_out(cfg, resume)
    out = cfg.out
    held = lock(out)
    spec = search_spec.stored(out)
    if spec is None:  # a new search (or one from before specs were stored): resolved now, kept for resume
        spec = fresh or search_spec.resolve(cfg.spaces)
        search_spec.save(out, spec)
    log_to_file(out / LOG_FILE)
    (out / STARTUP_FILE).unlink(missing_ok=True)  # a resumed search's workers start again
    journal = Journal(out / JOURNAL_FILE)
    if any(isinstance(e, Done) for e in journal.events):
        raise UserError(f"the search in {out} has finished; its policy is {out / BEST_FILE}")
    spent = (read_json(out / PROGRESS_FILE) or {}).get("spent", 0.0)
    budget = Budget(cfg.seconds, spent + time.monotonic() - started)
    session_start = spent
    import ray

    from autoprune.search.baselines import parse_baselines, parse_lambdas, tracking_metrics
    from autoprune.search.runner import SearchRunner, SearchSettings
    from autoprune.search.pool import WorkerPool
    from autoprune.tracking import Tracker

    track = read_json(out / TRACKING_FILE) or {}
    # the store is opened while Ray and the workers start (both take seconds)
    opening = ThreadPoolExecutor(1).submit(Tracker, cfg.tracking_uri, cfg.experiment, track.get("parent_run_id"),
                                           params=cfg.to_dict(), mode=cfg.log_candidates)
    connect_ray(cfg)
    pool = tracker = None
    try:
        pool = WorkerPool(worker_spec(cfg), cfg.workers, cfg.cpus_per_worker, cfg.gpus_per_worker,
                          forward_env=cfg.ray_address is not None)
        write_json_atomic(out / "workers.json", {"pids": pool.pids, "workers": pool.placement})
        tracker = opening.result()
        write_json_atomic(out / TRACKING_FILE, {"uri": cfg.tracking_uri, "experiment": cfg.experiment,
                                                "parent_run_id": tracker.parent_run_id})
        base = Policy(metric="wanda", sparsity=cfg.sparsity, pattern=cfg.pattern)

        def update(status: dict) -> None:
            write_json_atomic(out / PROGRESS_FILE, {"spent": budget.elapsed, "phase": status["phase"]})
            if on_update is not None:
                on_update(status)

        settings = SearchSettings(tuple(cfg.strategy_names), spec, cfg.seed, top_k=cfg.top_k,
                                  recipes=tuple(parse_baselines(cfg.baselines)),
                                  owl_lambdas=parse_lambdas(cfg.owl_lambdas), updates=tuple(cfg.update_names),
                                  per_forward=cfg.per_forward, validation_seconds=validation_seconds(cfg, pool.info))
        runner = SearchRunner(pool, journal, budget, base, settings, out, tracker, on_update=update)
        for e in runner.entries():  # an interrupted session's candidates: what the store misses is logged
            tracker.log_candidate(e.row())
        outcome = runner.run()
        entries = [e.row() for e in runner.entries()]
        counts = dict(Counter(e["strategy"] for e in entries))
        artifacts = write_results(cfg, pool, outcome, entries, counts)
        if cfg.save_model:  # after the budget: one more sequential pruning, then save_pretrained
            saved = pool.save(outcome.best, out / "model")
            if saved.error is not None:
                raise UserError(f"saving the pruned model failed: {saved.error}")
        write_json_atomic(out / PROGRESS_FILE, {"spent": budget.elapsed, "phase": "done"})
        journal.append(Done(budget.elapsed))
        phases = phase_seconds(journal.events)
        write_json_atomic(out / SUMMARY_FILE, {**read_json(out / SUMMARY_FILE), "phase_seconds": phases})
        tracker.finish({"best_proxy_loss": outcome.proxy_loss, "best_eval_perplexity": outcome.perplexity,
                        "best_select_perplexity": outcome.select_perplexity,
                        "candidates": sum(counts.values()), **tracking_metrics(outcome.baselines)}, artifacts,
                       runs=strategy_bests(entries), recipes=outcome.baselines, winner=winner_row(outcome),
                       validated=[(runner.state.scored[v["id"]].row(), {"select_perplexity": v["select_perplexity"],
                                                                        "eval_perplexity": v["eval_perplexity"]})
                                  for v in outcome.validated])
        return SearchResult(out, outcome.best, outcome.proxy_loss, outcome.perplexity, counts, outcome.validated,
                            outcome.baselines, outcome.select_perplexity, outcome.recipe, phases,
                            budget.elapsed - session_start, pool.retried, pool.replaced)
    except BaseException:
        if tracker is not None:  # the journal keeps everything; the store shows the run stopped
            tracker.finish({}, [], "KILLED")
        raise
    finally:
        ray.shutdown()
        journal.close()
        held.close()






def validation_seconds(cfg: SearchConfig, info: dict) -> tuple[float, float, float]:
    """Estimated seconds of one validation on the selection split, without and with a weight update
    (a sequential prune runs each block on the calibration windows twice; an update accumulates
    Hessians, about 1.5 forwards' worth, and reconstructs), and of one report on the eval data, from
    the worker's measured seconds per dense forward of one window."""
    per_window = info.get("window_seconds", 0.0)
    plain = per_window * (2 * cfg.calib_windows + cfg.select_windows)
    update = per_window * (3.5 * cfg.calib_windows + cfg.select_windows)
    return plain, update, per_window * (cfg.eval_windows or 128)










