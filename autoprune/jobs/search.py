"""``autoprune search``: spend a time budget finding a pruning policy, on Ray workers, in MLflow.

The run folder holds the config, the journal (every candidate, the source of truth), strategy
states, the best policy, plots and a summary; ``resume`` continues an interrupted search there.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from autoprune.config import Config, check_out
from autoprune.errors import UserError
from autoprune.pruning.policy import Policy, parse_pattern
from autoprune.search.budget import Budget, parse_budget
from autoprune.search.workers import WorkerSpec

CONFIG_FILE = "search_config.json"
JOURNAL_FILE = "journal.jsonl"
PROGRESS_FILE = "progress.json"
TRACKING_FILE = "tracking.json"
BEST_FILE = "best_policy.json"
CANDIDATES_FILE = "candidates.csv"
STARTUP_FILE = "startup.json"  # the workers' start-up steps, for the live view
LOG_FILE = "search.log"  # library log lines and warnings, kept out of the terminal
SUMMARY_FILE = "summary.json"
RESUMABLE = ("model", "sparsity", "pattern", "strategies", "calib", "eval", "select", "updates", "seed", "spaces")


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
        self.select = self.select or (self.calib if self.calib.startswith("tinystories") else "wikitext2-valid")
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
        from autoprune.search.orchestrator import REGISTRY

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
        if k in RESUMABLE and v != getattr(old, k):
            raise UserError(f"{out} was started with {k.replace('_', '-')}={getattr(old, k)!r}, not {v!r}")
    keep = {k: v for k, v in given.items()
            if k in ("budget", "workers", "ray_address", "tracking_uri", "save_model", "baselines", "per_forward",
                     "owl_lambdas", "log_candidates")}
    return replace(old, **keep)


def prepare_out(cfg: SearchConfig, resume: bool) -> SearchConfig:
    """A new search gets an empty out folder and its config saved there."""
    out, stored = cfg.out, cfg.out / CONFIG_FILE
    if resume:
        return cfg
    if stored.is_file():
        raise UserError(f"{out} holds a search already: pass --resume to continue it, or choose another --out")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not an autoprune search folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(stored)
    return cfg


LIBRARY_LOGGERS = ("mlflow", "alembic", "ray", "urllib3", "filelock", "py.warnings", "autoprune")


def log_to_file(path: Path) -> None:
    """Library log lines (MLflow's INFO lines among them), Python warnings and autoprune's own
    warnings go to ``path`` in the run folder, not into the live view."""
    import logging

    import mlflow  # noqa: F401 - configures its logger when imported: replaced here

    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.captureWarnings(True)
    for name in LIBRARY_LOGGERS:
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.propagate = False
        log.setLevel(logging.INFO)


def lock(out: Path):
    f = open(out / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise UserError(f"{out} is in use by another running search") from None
    return f


def ray_temp_dir(out: Path) -> str:
    """Ray's sockets live under its temp dir, and Unix socket paths are limited to ~107 bytes:
    under the run folder when its path is short, else a short per-folder dir under /tmp."""
    d = out.resolve() / "ray"
    if len(str(d)) <= 40:
        return str(d)
    return f"/tmp/autoprune-ray-{hashlib.sha1(str(d).encode()).hexdigest()[:8]}"


def probe_ray(address: str | None) -> None:
    """A one-line error for a Ray address nothing answers at (``ray.init`` would wait minutes)."""
    if not address or address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=3).close()
    except (OSError, ValueError) as e:
        raise UserError(f"Ray address {address} is unreachable ({getattr(e, 'strerror', None) or e})") from None


def connect_ray(cfg: SearchConfig) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if cfg.ray_address:
        ray.init(address=cfg.ray_address, **kwargs)
    else:
        ray.init(num_cpus=max(1, int(cfg.workers * cfg.cpus_per_worker)), num_gpus=int(cfg.workers * cfg.gpus_per_worker),
                 _temp_dir=ray_temp_dir(cfg.out), **kwargs)


def search(cfg: SearchConfig, resume: bool = False, on_update: Callable[[dict], None] | None = None,
           started: float | None = None) -> SearchResult:
    """Run (or with ``resume`` continue) the search; ``started``: the monotonic clock reading the
    budget counts from (default: now), so a command can count its own start-up too."""
    started = time.monotonic() if started is None else started
    from autoprune.search import spec as search_spec
    from autoprune.search.journal import Journal, read_json, write_json_atomic
    from autoprune.tracking import check_uri

    fresh = None if resume else search_spec.resolve(cfg.spaces)  # a bad space file: refused before anything is made
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
    if journal.of("done"):
        raise UserError(f"the search in {out} has finished; its policy is {out / BEST_FILE}")
    spent = (read_json(out / PROGRESS_FILE) or {}).get("spent", 0.0)
    budget = Budget(cfg.seconds, spent + time.monotonic() - started)
    session_start = spent
    import ray

    from autoprune.search.baselines import parse_baselines, parse_lambdas, tracking_metrics
    from autoprune.search.orchestrator import Orchestrator
    from autoprune.search.workers import WorkerPool
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

        orch = Orchestrator(pool, journal, budget, base, cfg.strategy_names, out, cfg.seed, tracker, spec=spec,
                            top_k=cfg.top_k, on_update=update, baselines=parse_baselines(cfg.baselines),
                            per_forward=cfg.per_forward, owl_lambdas=parse_lambdas(cfg.owl_lambdas),
                            updates=cfg.update_names, validation_seconds=validation_seconds(cfg, pool.info))
        for e in orch.entries():  # an interrupted session's candidates: what the store misses is logged
            tracker.log_candidate(e)
        outcome = orch.run()
        entries = orch.entries()
        counts = dict(Counter(e["strategy"] for e in entries))
        artifacts = write_results(cfg, orch, outcome, entries, counts)
        if cfg.save_model:  # after the budget: one more sequential pruning, then save_pretrained
            pool.refill()
            pool.submit("save", "validate", outcome.best.to_dict(), str(out / "model"))
            saved = []
            while not saved:
                saved = pool.wait(1.0)
            if "error" in saved[0][1]:
                raise UserError(f"saving the pruned model failed: {saved[0][1]['error']}")
        write_json_atomic(out / PROGRESS_FILE, {"spent": budget.elapsed, "phase": "done"})
        journal.append({"event": "done", "t": round(budget.elapsed, 3)})
        phases = phase_seconds(journal.events)
        write_json_atomic(out / SUMMARY_FILE, {**read_json(out / SUMMARY_FILE), "phase_seconds": phases})
        tracker.finish({"best_proxy_loss": outcome.proxy_loss, "best_eval_perplexity": outcome.perplexity,
                        "best_select_perplexity": outcome.select_perplexity,
                        "candidates": sum(counts.values()), **tracking_metrics(outcome.baselines)}, artifacts,
                       runs=strategy_bests(entries), recipes=outcome.baselines, winner=winner_row(outcome),
                       validated=[(orch.entry(v["id"]), {"select_perplexity": v["select_perplexity"],
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


def strategy_bests(entries: list[dict], k: int | None = None) -> list[dict]:
    """Each strategy's ``k`` best full-fidelity one-shot candidates (default ``tracking.STRATEGY_BEST``)."""
    from autoprune.tracking import STRATEGY_BEST

    by: dict[str, list[dict]] = {}
    for e in entries:
        if e.get("fidelity", 1.0) >= 1 and not e.get("sequential") and math.isfinite(e["result"]["loss"]):
            by.setdefault(e["strategy"], []).append(e)
    return [e for es in by.values() for e in sorted(es, key=lambda e: e["result"]["loss"])[:k or STRATEGY_BEST]]


def winner_row(outcome) -> dict | None:
    """The winner as tracking names it: a validated candidate's id and perplexities, or a recipe's row."""
    if outcome.recipe is not None:
        return next((r for r in outcome.baselines if r["name"] == outcome.recipe), None)
    if outcome.best_id is None or outcome.select_perplexity is None:
        return None
    return {"id": outcome.best_id, "select_perplexity": outcome.select_perplexity,
            "eval_perplexity": outcome.perplexity}


def validation_seconds(cfg: SearchConfig, info: dict) -> tuple[float, float, float]:
    """Estimated seconds of one validation on the selection split, without and with a weight update
    (a sequential prune runs each block on the calibration windows twice; an update accumulates
    Hessians, about 1.5 forwards' worth, and reconstructs), and of one report on the eval data, from
    the worker's measured seconds per dense forward of one window."""
    per_window = info.get("window_seconds", 0.0)
    plain = per_window * (2 * cfg.calib_windows + cfg.select_windows)
    update = per_window * (3.5 * cfg.calib_windows + cfg.select_windows)
    return plain, update, per_window * (cfg.eval_windows or 128)


def phase_seconds(events: list[dict]) -> dict[str, float]:
    """Seconds per phase from the journal (all sessions): start-up, the search phases, validation,
    and finishing (results, the saved model)."""
    out: dict[str, float] = {}
    last_t, last = 0.0, "start-up"
    for e in events:
        if e["event"] in ("phase_start", "done"):
            out[last] = out.get(last, 0.0) + e["t"] - last_t
            last_t, last = e["t"], e.get("phase", "finishing")
        elif e["event"] == "phase_end":
            out[last] = out.get(last, 0.0) + e["t"] - last_t
            last_t, last = e["t"], "between phases"
    return {k: round(v, 1) for k, v in out.items()}


def write_results(cfg: SearchConfig, orch, outcome, entries: list[dict], counts: dict[str, int]) -> list[Path]:
    """best_policy.json, the winner's exports, plots, candidates.csv and summary.json in the run
    folder (``entries``: every candidate; ``counts``: candidates per strategy); their paths."""
    from autoprune.search.journal import write_json_atomic
    from autoprune.search.plots import plot_layer_ratios, plot_progress
    from autoprune.search.spec import SPEC_FILE

    out = cfg.out
    files: list[Path] = []
    meta = {"search": str(out), "candidate": outcome.best_id, "proxy_loss": outcome.proxy_loss,
            "select_perplexity": outcome.select_perplexity, "select": cfg.select,
            "eval_perplexity": outcome.perplexity, "eval": cfg.eval}
    if outcome.recipe is not None:
        meta["note"] = f"the recipe {outcome.recipe} beat every candidate on the selection split: it is returned"
    elif outcome.best_id is None:
        meta["note"] = "no candidate finished within the budget: the target with the default metric"
    best = replace(outcome.best, meta=meta)
    best.save(out / BEST_FILE)
    files.append(out / BEST_FILE)
    files += export_metric(best, out / "winner")
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    if entries:
        files.append(plot_progress(entries, plots / "search_progress.png", outcome.best_id))
    ratios = [(f"#{v['id']} select ppl {v['select_perplexity']:.2f}", v["block_ratios"]) for v in outcome.validated]
    recipes = [(r["name"], r["block_ratios"]) for r in outcome.baselines if r.get("block_ratios")]
    if ratios or recipes:
        winner = next((label for (label, _), v in zip(ratios, outcome.validated) if v["id"] == outcome.best_id),
                      outcome.recipe)
        files.append(plot_layer_ratios(ratios, plots / "layer_ratios.png", winner, recipes))
    files.append(write_candidates(entries, outcome, out / CANDIDATES_FILE))
    write_json_atomic(out / SUMMARY_FILE, {
        "config": cfg.to_dict(), "winner": winner_row(outcome), "ranking": ranking(outcome),
        "best_policy": outcome.best.to_dict(),
        "best_candidate": outcome.best_id, "best_proxy_loss": outcome.proxy_loss,
        "best_select_perplexity": outcome.select_perplexity, "best_eval_perplexity": outcome.perplexity,
        "recipe_returned": outcome.recipe, "validated": outcome.validated,
        "baselines": outcome.baselines, "candidates": counts,
        "pool": {"retried": orch.pool.retried, "replaced": orch.pool.replaced}})
    files.append(out / SUMMARY_FILE)
    files.append(out / SPEC_FILE)  # the spaces this search ran with
    return files


def ranking(outcome) -> list[dict]:
    """Validated candidates and recipes by selection perplexity (how the winner was chosen), the
    winner first."""
    rows = [{"candidate": v["id"], "select_perplexity": v["select_perplexity"],
             "eval_perplexity": v["eval_perplexity"], "proxy_loss": v["proxy_loss"]} for v in outcome.validated]
    rows += [{"recipe": r["name"], "select_perplexity": r.get("select_perplexity"),
              "eval_perplexity": r["perplexity"]} for r in outcome.baselines
             if "skipped" not in r and r["name"] != "dense"]
    return sorted(rows, key=lambda r: (r["select_perplexity"] is None, r["select_perplexity"] or 0.0))


def write_candidates(entries: list[dict], outcome, path: Path) -> Path:
    """Every candidate as one CSV row (the journal's content, flat): what it was, what it scored."""
    import csv

    from autoprune.tracking import short_allocation

    validated = {v["id"]: v for v in outcome.validated}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "strategy", "phase", "protocol", "fidelity", "metric", "allocation", "update", "pattern",
                    "sparsity", "proxy_loss", "seconds", "select_perplexity", "eval_perplexity", "winner", "error"])
        for e in entries:
            p, r, v = e["policy"], e["result"], validated.get(e["id"], {})
            w.writerow([e["id"], e["strategy"], e["phase"], "sequential" if e.get("sequential") else "one-shot",
                        f"{e.get('fidelity', 1.0):.3g}", p["metric"], short_allocation(p), p["update"], p["pattern"],
                        f"{r['sparsity']:.5f}", f"{r['loss']:.6g}", f"{r['seconds']:.3f}",
                        v.get("select_perplexity", ""), v.get("eval_perplexity") or "",
                        "yes" if e["id"] == outcome.best_id and outcome.recipe is None else "", r.get("error") or ""])
    return path


def export_metric(policy: Policy, stem: Path) -> list[Path]:
    """The best policy in every format of ``autoprune.export`` (json, python, latex), each with the
    whole policy; none for the OBS solver's ``sparsegpt``, which is not a score (best_policy.json
    holds it)."""
    from autoprune.export import FORMATS, export_metric as render, load_metric

    if policy.metric == "sparsegpt":
        return []
    expr = load_metric(policy.metric)
    suffix = {"json": ".json", "python": ".py", "latex": ".tex"}
    paths = []
    for fmt in FORMATS:
        path = stem.with_suffix(suffix.get(fmt, "." + fmt))
        path.write_text(render(expr, fmt, {"metric": policy.metric}, policy))
        paths.append(path)
    return paths
