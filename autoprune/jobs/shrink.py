"""``autoprune shrink``: remove blocks, KV groups and MLP channels; save a smaller ``from_pretrained`` folder.

Either an explicit plan (``blocks``, ``heads``, ``channels``) or a target ``speedup``, and then how
the plan is found (``search``):

- ``tpe`` (default), ``nsga2``, ``evo``: a search over which blocks go and the uniform widths
  (``structured.space``), each trial's speed-up measured on this machine and its quality scored by a
  one-shot proxy on a few windows of the selection data (``structured.search``, ``structured.proxy``);
  plans short of the target are infeasible. With ``pareto`` the search maps the front of proxy
  perplexity against measured speed-up instead (``pareto.csv``) and the model saved is the front's
  best plan at the target. Logged to MLflow (a run per trial) and to ``trials.csv`` / ``pareto.png``.
  The families' plans (below) are its first trials and always among its finalists.
- ``families``: each family's least-removal plan (depth, width, width+heads, mixed) found by
  bisection (``structured.speedup``).

Either way the finalists are shrunk for real and the one with the lowest perplexity on the
selection windows (``select``: by default WikiText-2's validation split, never the evaluation
data) is saved.
"""

from __future__ import annotations

import json
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from autoprune.config import Config, check_out, check_positive
from autoprune.errors import UserError
from autoprune.evaluation import perplexity
from autoprune.data import load_documents, tokenize_windows
from autoprune.data.windows import sample_indices
from autoprune.jobs.common import calibration_windows, default_select, evaluation_windows, selection_indices
from autoprune.models import load_model
from autoprune.structured import (Importance, Plan, Planner, ShrinkReport, dense_block_influence, discover, select_plan,
                                  shrink_model)
from autoprune.structured.layout import Layout, check_plan, require
from autoprune.structured.driver import SearchSettings, search_plans, write_trials
from autoprune.structured.journal import JOURNAL_FILE, Journal
from autoprune.structured.search import Trial
from autoprune.structured.speedup import SEARCH_PROBE, Selected

SHRINK_FILE = "autoprune_shrink.json"
TRIALS_FILE = "trials.csv"
FRONT_FILE = "pareto.csv"
PLOT_FILE = "pareto.png"
SEARCHES = ("tpe", "nsga2", "evo", "families")
DEFAULT_TRIALS = 40  # SmolLM2-135M on one CPU core: 32 trials, the families' bisection included, took 10-12 minutes


@dataclass
class ShrinkConfig(Config):
    model: str
    out: Path
    blocks: int = 0  # decoder blocks dropped (lowest Block Influence first)
    heads: float = 0.0  # fraction of KV groups, each with its query heads, removed from every kept block
    channels: float = 0.0  # fraction of MLP channels removed from every kept block
    speedup: float | None = None  # instead: the best plan reaching this measured decode speed-up
    importance: str = "activation"  # activation (FLAP fluctuation), obs (SlimGPT), taylor, or a metric / expression
    reconstruct: bool = True  # least-squares compensation in o_proj / down_proj
    damp: float = 0.01  # ridge of the reconstruction, relative to the mean diagonal of the Gram
    calib: str = "c4"
    calib_windows: int = 128
    select: str | None = None  # --speedup: data the plan is chosen and the proxy scored on (None: default_select)
    select_windows: int = 16
    seqlen: int = 2048
    seed: int = 0
    batch_size: int = 8
    search: str = "tpe"  # --speedup: tpe, nsga2, evo (a searched plan) or families (bisection per family)
    trials: int | None = None  # search trials (default DEFAULT_TRIALS)
    pareto: bool = False  # map the front of proxy perplexity against measured speed-up (tpe or nsga2)
    finalists: int = 3  # best searched plans by proxy shrunk for real and scored on the selection windows
    proxy_windows: int = 4  # windows of the selection data (not the selection windows) the proxy scores plans on
    tracking_uri: str = "sqlite:///runs/mlflow.db"
    experiment: str = "shrink"  # MLflow experiment (prefixed autoprune/) of a search
    eval: str | None = None  # data to report dense and shrunk perplexity on (chooses nothing)
    eval_windows: int | None = None
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        check_out(self.out)
        check_positive(self, "calib_windows", "select_windows", "batch_size", "eval_windows")
        if self.out.exists() and any(self.out.iterdir()) and not any((self.out / f).is_file()
                                                                     for f in (SHRINK_FILE, JOURNAL_FILE)):
            raise UserError(f"{self.out}: exists and is not an autoprune shrink folder; choose another --out")
        if not isinstance(self.blocks, int) or self.blocks < 0:
            raise UserError(f"--blocks must be a whole number of blocks, at least 0, got {self.blocks}")
        for name in ("heads", "channels"):
            if not 0 <= getattr(self, name) < 1:
                raise UserError(f"--{name} is the fraction removed from every block, in [0, 1), got {getattr(self, name)}")
        explicit = self.blocks or self.heads or self.channels
        if self.speedup is not None and explicit:
            raise UserError("--speedup chooses the plan itself; do not combine it with --blocks, --heads or --channels")
        if self.speedup is None and not explicit:
            raise UserError("nothing to remove: pass --blocks, --heads, --channels or --speedup")
        if self.speedup is not None and not self.speedup > 1:
            raise UserError(f"--speedup must be above 1, got {self.speedup}")
        if self.damp < 0:
            raise UserError(f"--damp must be at least 0, got {self.damp}")
        for name in ("calib_windows", "select_windows", "batch_size"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        Importance(self.importance)  # UserError for an unknown or unsuitable metric
        check_positive(self, "trials", "finalists", "proxy_windows")
        if self.search not in SEARCHES:
            raise UserError(f"unknown --search {self.search!r} (choose {', '.join(SEARCHES)})")
        if self.speedup is None and (self.trials is not None or self.pareto):
            raise UserError("--trials and --pareto set a search for a --speedup; pass --speedup")
        if self.search == "families" and (self.trials is not None or self.pareto):
            raise UserError("--search families measures each family's plan by bisection: it takes no --trials "
                            "or --pareto; choose --search tpe, nsga2 or evo")
        if self.pareto and self.search == "evo":
            raise UserError("--pareto searches with tpe or nsga2, not evo")
        if self.trials is None and self.speedup is not None and self.search != "families":
            self.trials = DEFAULT_TRIALS
        if self.speedup is not None:
            self.select = self.select or default_select(self.calib)
            if self.select == self.eval:
                raise UserError(f"--select and --eval are both {self.eval!r}: the plan must be chosen on other data "
                                "than it is reported on")

    @property
    def searched(self) -> bool:
        return self.speedup is not None and self.search != "families"

    def facts(self) -> dict:
        """What a search's timings and proxy scores depend on (``structured.journal``): a rerun
        under other values cannot reuse them."""
        keys = ("model", "dtype", "device", "calib", "calib_windows", "select", "select_windows", "proxy_windows",
                "seqlen", "seed", "importance", "reconstruct", "damp", "batch_size")
        return {**{k: getattr(self, k) for k in keys}, "host": platform.node(), "threads": torch.get_num_threads(),
                "probe": asdict(SEARCH_PROBE)}

    def search_settings(self) -> SearchSettings:
        return SearchSettings(self.search, self.speedup, self.trials, self.pareto, self.finalists, self.seed,
                              self.importance, self.reconstruct, self.damp, self.batch_size)

    def plan(self, layout: Layout) -> Plan:
        """The explicit plan in counts (fractions rounded to the nearest whole structure)."""
        require(layout, self.heads > 0, self.channels > 0, self.model)
        plan = Plan(self.blocks, round(self.heads * layout.kv_heads), round(self.channels * layout.channels))
        if self.heads and not plan.kv_groups:
            raise UserError(f"--heads {self.heads} removes no whole KV group of {layout.kv_heads} "
                            f"(each {layout.n_rep} query heads with their key/value head)")
        if self.channels and not plan.channels:
            raise UserError(f"--channels {self.channels} removes no MLP channel of {layout.channels}")
        check_plan(plan, layout, self.model)
        return plan


@dataclass(frozen=True)
class ShrinkResult:
    out: Path
    layout: Layout  # of the dense model
    plan: Plan
    report: ShrinkReport
    speedup: float  # measured decode speed-up (batch 1) over the dense model
    family: str | None = None  # --speedup: the chosen plan's family
    candidates: tuple[Selected, ...] = ()  # --speedup: each candidate, its selection perplexity and report
    dense_perplexity: float | None = None
    perplexity: float | None = None
    tokens_per_s: tuple[float, float] | None = None  # measured decode tokens/s (batch 1), dense and shrunk
    trials: tuple[Trial, ...] = ()  # a search's trials, in order
    front: tuple[Trial, ...] = ()  # their Pareto front (proxy perplexity against speed-up)


def shrink(cfg: ShrinkConfig, progress: bool = True) -> ShrinkResult:
    importance = Importance(cfg.importance)
    lm = load_model(cfg.model, cfg.dtype, cfg.device)
    layout = discover(lm.model)
    plan = cfg.plan(layout) if cfg.speedup is None else None  # refuse a bad plan before the slow part
    journal = Journal(cfg.out, cfg.facts()) if cfg.searched else None  # an interrupted search's measurements
    if journal is not None and journal.replayed and progress:
        print(f"resuming the search in {cfg.out}: {journal.replayed} recorded measurements", file=sys.stderr)
    planner = Planner(lm.model, journal=journal)
    if cfg.speedup is not None:
        planner.check_reachable(cfg.speedup)
    if cfg.searched:
        from autoprune.tracking import check_uri

        check_uri(cfg.tracking_uri)  # before the slow part
        journal.start()
    candidates = planner.candidates(cfg.speedup) if cfg.speedup is not None and not cfg.searched else ()
    calib = calibration_windows(lm.tokenizer, cfg.calib, cfg.calib_windows, cfg.seqlen, cfg.seed)
    evalw = evaluation_windows(lm.tokenizer, cfg.eval, cfg.seqlen, cfg.eval_windows) if cfg.eval else None
    dense_ppl = perplexity(lm.model, evalw, cfg.batch_size, progress).perplexity if evalw is not None else None
    family, scored, trials, front = None, (), (), ()
    if cfg.speedup is None:
        speedup = planner.speedup(plan)  # timed on a copy cut to the plan's shapes, before the model changes
        report = shrink_model(lm.model, plan, calib, importance, cfg.reconstruct, cfg.damp, cfg.batch_size,
                              progress, name=cfg.model)
        model = lm.model
    else:
        select, proxy = search_windows(lm.tokenizer, cfg)
        tracker = open_tracker(cfg, journal.replayed) if cfg.searched else None
        try:
            if cfg.searched:
                found = search_plans(lm.model, planner, calib, proxy, cfg.search_settings(),
                                     lambda t: tracker.log_trial(t.row(layout), cfg.search), progress,
                                     journal=journal)
                candidates, influence, trials, front = (found.candidates, list(found.influence), found.trials,
                                                        found.front)
            else:
                influence = dense_block_influence(lm.model, calib, cfg.batch_size) if layout.blocks > 1 else None
            model, chosen = select_plan(lm.model, list(candidates), calib, select, importance, cfg.reconstruct,
                                        cfg.damp, cfg.batch_size, influence, progress)
        except BaseException as e:  # the trials so far stay in the store (and their measurements in the folder)
            if tracker is not None:
                tracker.finish(None, {}, {}, [], status="FAILED" if isinstance(e, UserError) else "KILLED")
            raise
        best = min(chosen, key=lambda s: s.loss)
        plan, report, speedup, family = best.candidate.plan, best.report, best.candidate.speedup, best.candidate.family
        scored = tuple(chosen)
    ppl = perplexity(model, evalw, cfg.batch_size, progress).perplexity if evalw is not None else None

    cfg.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(cfg.out)
    lm.tokenizer.save_pretrained(cfg.out)
    result = ShrinkResult(cfg.out, layout, plan, report, speedup, family, scored, dense_ppl, ppl,
                          planner.tokens_per_second(plan), tuple(trials), tuple(front))
    record = {k: v for k, v in asdict(result).items() if k not in ("out", "trials", "front")}
    (cfg.out / SHRINK_FILE).write_text(json.dumps({"config": cfg.to_dict(), "description": plan.describe(layout),
                                                   **record}, indent=2) + "\n")
    if cfg.searched:
        write_search(cfg, result, tracker)
    return result


def open_tracker(cfg: ShrinkConfig, replayed: int = 0):
    """The search's MLflow run; ``replayed``: measurements a resumed search read back (tagged)."""
    from autoprune.structured.tracking import ShrinkTracker
    from autoprune.tracking import EXPERIMENT_PREFIX

    tags = {"autoprune.replayed_measurements": str(replayed)} if replayed else None
    return ShrinkTracker(cfg.tracking_uri, EXPERIMENT_PREFIX + cfg.experiment, cfg.to_dict(), tags)


def write_search(cfg: ShrinkConfig, res: ShrinkResult, tracker) -> None:
    """``trials.csv``, ``pareto.csv`` (with ``--pareto``) and ``pareto.png`` in the folder; the chosen trial,
    the finalists' selection perplexities and the result closing the MLflow run."""
    from autoprune.structured.plots import plot_front

    files = [write_trials(cfg.out / TRIALS_FILE, list(res.trials), res.layout)]
    if cfg.pareto:
        files.append(write_trials(cfg.out / FRONT_FILE, list(res.front), res.layout))
    number = {}
    for t in res.trials:
        number.setdefault(t.plan, t.number)
    chosen = next(t for t in res.trials if t.plan == res.plan)
    files.append(plot_front(list(res.trials), cfg.out / PLOT_FILE, res.tokens_per_s[0], cfg.speedup, chosen,
                            f"{cfg.model}: {cfg.search}, {len(res.trials)} trials, target {cfg.speedup:g}x"))
    tracker.finish(chosen.number, {number[c.candidate.plan]: c.loss for c in res.candidates},
                   {"speedup": res.speedup, "select_ppl": min(c.loss for c in res.candidates),
                    "eval_ppl": res.perplexity, "dense_eval_ppl": res.dense_perplexity,
                    "params_after": res.report.params_after, "params_before": res.report.params_before,
                    "tokens_per_s": res.tokens_per_s[1] if res.tokens_per_s else None,
                    "feasible_trials": sum(t.feasible for t in res.trials), "front_size": len(res.front)},
                   [*files, cfg.out / SHRINK_FILE])



def search_windows(tokenizer, cfg: ShrinkConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The selection windows (as ``selection_windows`` draws them) and the search's proxy windows:
    from the same data, so that the proxy ranks plans as the selection will, among the windows
    neither the calibration (when the data is the calibration set) nor the selection took."""
    windows = tokenize_windows(tokenizer, load_documents(cfg.select), cfg.seqlen)
    chosen = selection_indices(len(windows), cfg.select, cfg.select_windows, cfg.seed, cfg.calib,
                               ((cfg.calib_windows, cfg.seed),))
    if not cfg.searched:
        return windows[chosen], windows[:0]
    used = set(chosen.tolist())
    if cfg.select == cfg.calib:
        used.update(sample_indices(len(windows), cfg.calib_windows, cfg.seed).tolist())
    free = [i for i in range(len(windows)) if i not in used]
    if len(free) < cfg.proxy_windows:
        raise UserError(f"{cfg.select} gives {len(windows)} windows; after the calibration and selection windows only "
                        f"{len(free)} are left for the search's proxy, not {cfg.proxy_windows}: lower --proxy-windows, "
                        "--select-windows or --calib-windows")
    return windows[chosen], windows[torch.tensor(free)[sample_indices(len(free), cfg.proxy_windows, cfg.seed + 1)]]
