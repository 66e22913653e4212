"""``autoprune prune``: load a model, calibrate, apply a policy, save a ``from_pretrained`` folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from autoprune.config import Config
from autoprune.errors import UserError
from autoprune.evaluation import perplexity
from autoprune.jobs.common import calibration_windows, evaluation_windows
from autoprune.models import load_model
from autoprune.pruning.engine import PruneReport, model_sparsity, prune_sequential
from autoprune.pruning.policy import Policy

POLICY_FILE = "autoprune_policy.json"
REPORT_FILE = "autoprune_report.json"


@dataclass
class PruneConfig(Config):
    model: str
    out: Path
    method: str = "wanda"
    sparsity: float = 0.5
    pattern: str = "unstructured"
    allocation: str = "uniform"
    policy: Path | None = None  # a policy JSON file; overrides method/sparsity/pattern/allocation
    metric: str | None = None  # a metric file, named metric or expression; replaces the policy's metric
    update: str | None = None  # none, sparsegpt or admm; replaces the policy's weight update
    calib: str = "c4"
    calib_windows: int = 128
    seqlen: int = 2048
    seed: int = 0
    batch_size: int = 8
    eval: str | None = None  # data to report dense and pruned perplexity on
    eval_windows: int | None = None
    device: str = "auto"
    dtype: str = "auto"

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.policy is not None:
            self.policy = Path(self.policy)
        if self.out.exists() and any(self.out.iterdir()) and not (self.out / POLICY_FILE).is_file():
            raise UserError(f"{self.out}: exists and is not an autoprune output folder; choose another --out")
        if self.batch_size <= 0:
            raise UserError(f"batch size must be positive, got {self.batch_size}")

    def make_policy(self) -> Policy:
        if self.policy is not None:
            policy = Policy.load(self.policy)
        else:
            policy = Policy.from_method(self.method, self.sparsity, self.pattern, self.allocation)
        if self.metric is not None:
            from autoprune.export import metric_spec

            policy = replace(policy, metric=metric_spec(self.metric))
        if self.update is not None:
            policy = replace(policy, update=self.update)  # validated by the policy
        return policy


@dataclass
class PruneResult:
    policy: Policy
    report: PruneReport
    out: Path
    dense_perplexity: float | None = None
    perplexity: float | None = None


def prune(cfg: PruneConfig, progress: bool = True) -> PruneResult:
    policy = cfg.make_policy()  # validate before the slow part
    lm = load_model(cfg.model, cfg.dtype, cfg.device)
    calib = calibration_windows(lm.tokenizer, cfg.calib, cfg.calib_windows, cfg.seqlen, cfg.seed)
    evalw = evaluation_windows(lm.tokenizer, cfg.eval, cfg.seqlen, cfg.eval_windows) if cfg.eval else None
    dense_ppl = perplexity(lm.model, evalw, cfg.batch_size, progress).perplexity if evalw is not None else None
    report = prune_sequential(lm.model, policy, calib, cfg.batch_size, progress)
    ppl = perplexity(lm.model, evalw, cfg.batch_size, progress).perplexity if evalw is not None else None

    cfg.out.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(cfg.out)
    lm.tokenizer.save_pretrained(cfg.out)
    policy.save(cfg.out / POLICY_FILE)
    sparsity, per_layer = model_sparsity(lm.model)
    (cfg.out / REPORT_FILE).write_text(json.dumps({
        "config": cfg.to_dict(), "sparsity": sparsity, "block_ratios": report.block_ratios,
        "layer_sparsity": per_layer, "seconds": report.seconds,
        "dense_perplexity": dense_ppl, "perplexity": ppl,
    }, indent=2) + "\n")
    return PruneResult(policy, report, cfg.out, dense_ppl, ppl)
