"""``autoprune shrink``: remove blocks, KV groups and MLP channels; save a smaller ``from_pretrained`` folder.

Either an explicit plan (``blocks``, ``heads``, ``channels``) or a target ``speedup``: the plan
(depth, width or mixed) that reaches that measured decode speed-up on this machine with the lowest
perplexity on calibration-side windows (``autoprune.structured.speedup``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from autoprune.config import Config, check_out, check_positive
from autoprune.errors import UserError
from autoprune.evaluation import perplexity
from autoprune.jobs.common import calibration_windows, evaluation_windows, selection_windows
from autoprune.models import load_model
from autoprune.structured import (Importance, Plan, Planner, ShrinkReport, dense_block_influence, discover, select_plan,
                                  shrink_model)
from autoprune.structured.layout import Layout, check_plan, require
from autoprune.structured.speedup import Selected

SHRINK_FILE = "autoprune_shrink.json"


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
    select: str | None = None  # --speedup: data the plan is chosen on (default: the calibration set's unused windows)
    select_windows: int = 16
    seqlen: int = 2048
    seed: int = 0
    batch_size: int = 8
    eval: str | None = None  # data to report dense and shrunk perplexity on (chooses nothing)
    eval_windows: int | None = None
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        check_out(self.out)
        check_positive(self, "calib_windows", "select_windows", "batch_size", "eval_windows")
        if self.out.exists() and any(self.out.iterdir()) and not (self.out / SHRINK_FILE).is_file():
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


def shrink(cfg: ShrinkConfig, progress: bool = True) -> ShrinkResult:
    importance = Importance(cfg.importance)
    lm = load_model(cfg.model, cfg.dtype, cfg.device)
    layout = discover(lm.model)
    plan = cfg.plan(layout) if cfg.speedup is None else None  # refuse a bad plan before the slow part
    planner = Planner(lm.model)
    candidates = planner.candidates(cfg.speedup) if cfg.speedup is not None else ()
    calib = calibration_windows(lm.tokenizer, cfg.calib, cfg.calib_windows, cfg.seqlen, cfg.seed)
    evalw = evaluation_windows(lm.tokenizer, cfg.eval, cfg.seqlen, cfg.eval_windows) if cfg.eval else None
    dense_ppl = perplexity(lm.model, evalw, cfg.batch_size, progress).perplexity if evalw is not None else None
    family, scored = None, ()
    if cfg.speedup is None:
        speedup = planner.speedup(plan)  # timed on a copy cut to the plan's shapes, before the model changes
        report = shrink_model(lm.model, plan, calib, importance, cfg.reconstruct, cfg.damp, cfg.batch_size,
                              progress, name=cfg.model)
        model = lm.model
    else:
        select = selection_windows(lm.tokenizer, cfg.select or cfg.calib, cfg.select_windows, cfg.seqlen, cfg.seed,
                                   cfg.calib, ((cfg.calib_windows, cfg.seed),))
        influence = dense_block_influence(lm.model, calib, cfg.batch_size) if layout.blocks > 1 else None
        model, chosen = select_plan(lm.model, list(candidates), calib, select, importance, cfg.reconstruct, cfg.damp,
                                    cfg.batch_size, influence, progress)
        best = min(chosen, key=lambda s: s.loss)
        plan, report, speedup, family = best.candidate.plan, best.report, best.candidate.speedup, best.candidate.family
        scored = tuple(chosen)
    ppl = perplexity(model, evalw, cfg.batch_size, progress).perplexity if evalw is not None else None

    cfg.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(cfg.out)
    lm.tokenizer.save_pretrained(cfg.out)
    result = ShrinkResult(cfg.out, layout, plan, report, speedup, family, scored, dense_ppl, ppl)
    record = {k: v for k, v in asdict(result).items() if k != "out"}
    (cfg.out / SHRINK_FILE).write_text(json.dumps({"config": cfg.to_dict(), "description": plan.describe(layout),
                                                   **record}, indent=2) + "\n")
    return result
