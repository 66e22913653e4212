"""``autoprune prune``: load a model, calibrate, apply a policy, save a ``from_pretrained`` folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from autoprune.config import Config, check_out, check_positive
from autoprune.errors import UserError
from autoprune.evaluation import perplexity
from autoprune.jobs.common import calibration_windows, evaluation_windows
from autoprune.models import load_model
from autoprune.models.loading import resolve_device
from autoprune.pruning.allocation import block_ratios, by_routed_tokens
from autoprune.pruning.engine import PruneReport, blocks_linears, dense_blockwise, model_sparsity, prune_sequential
from autoprune.pruning.policy import Policy, parse_pattern

POLICY_FILE = "autoprune_policy.json"
REPORT_FILE = "autoprune_report.json"
EXPERT_ALLOCATIONS = ("uniform", "tokens")


@dataclass
class PruneConfig(Config):
    model: str
    out: Path
    method: str = "wanda"
    sparsity: float | None = None  # default 0.5; an N:M pattern fixes it
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
    offload: bool = False  # the model in host memory, each block on --device only while it is pruned
    expert_allocation: str = "uniform"  # uniform, or tokens: experts that see fewer tokens lose more
    router_weighted: bool = False  # experts' statistics weigh routed tokens by router weight (MoE-Pruner)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.policy is not None:
            self.policy = Path(self.policy)
        check_out(self.out)
        if self.out.exists() and any(self.out.iterdir()) and not (self.out / POLICY_FILE).is_file():
            raise UserError(f"{self.out}: exists and is not an autoprune output folder; choose another --out")
        check_positive(self, "batch_size", "calib_windows", "eval_windows")
        nm = parse_pattern(self.pattern)
        if nm is not None and self.sparsity is not None and abs(self.sparsity - (1 - nm[0] / nm[1])) > 1e-9:
            raise UserError(f"pattern {self.pattern} fixes sparsity at {1 - nm[0] / nm[1]:g}; "
                            f"--sparsity {self.sparsity:g} contradicts it")
        if self.expert_allocation not in EXPERT_ALLOCATIONS:
            raise UserError(f"unknown expert allocation {self.expert_allocation!r} "
                            f"(choose {', '.join(EXPERT_ALLOCATIONS)})")

    def make_policy(self) -> Policy:
        if self.policy is not None:
            policy = Policy.load(self.policy)
        else:
            policy = Policy.from_method(self.method, 0.5 if self.sparsity is None else self.sparsity, self.pattern,
                                        self.allocation)
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
    # offloaded, the model waits in host memory in the dtype it will have on the device
    lm = load_model(cfg.model, cfg.dtype, "cpu" if cfg.offload else cfg.device, dtype_for=cfg.device)
    offload_to = resolve_device(cfg.device) if cfg.offload else None
    calib = calibration_windows(lm.tokenizer, cfg.calib, cfg.calib_windows, cfg.seqlen, cfg.seed)
    evalw = evaluation_windows(lm.tokenizer, cfg.eval, cfg.seqlen, cfg.eval_windows) if cfg.eval else None
    dense_ppl = perplexity(lm.model, evalw, cfg.batch_size, progress).perplexity if evalw is not None else None
    if cfg.expert_allocation == "tokens":
        policy = _by_routed_tokens(policy, lm.model, calib, cfg, progress)
    report = prune_sequential(lm.model, policy, calib, cfg.batch_size, progress, offload_to=offload_to,
                              router_weighted=cfg.router_weighted)
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


def _by_routed_tokens(policy: Policy, model, calib, cfg: PruneConfig, progress: bool) -> Policy:
    """``policy`` made explicit, its experts' ratios set by the tokens routed to them."""
    bls = blocks_linears(model)
    if not any(u.kind == "expert" for bl in bls for u in bl.values()):
        raise UserError(f"{cfg.model}: --expert-allocation tokens needs a mixture-of-experts model; this one has no experts")
    if policy.nm is not None:
        raise UserError(f"--expert-allocation tokens sets per-expert ratios; pattern {policy.pattern} fixes every ratio")
    stats = dense_blockwise(model, calib, cfg.batch_size, router_weighted=cfg.router_weighted,
                            offload_to=resolve_device(cfg.device) if cfg.offload else None)
    ratios = block_ratios(policy, bls, {n: st.X for n, st in stats.items()})
    return by_routed_tokens(policy, model, ratios, {n: st.tokens for n, st in stats.items()})
