"""``autoprune prune``: apply a pruning policy and save the pruned model."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoprune.commands import add_model_args, print_report, quiet_libraries


def add_parser(sub) -> None:
    p = sub.add_parser("prune", help="prune a model with a method or a policy file and save it",
                       description="Prune a model and write a folder that transformers loads with from_pretrained.")
    add_model_args(p)
    p.add_argument("--method", default="wanda", help="magnitude, wanda, ria or sparsegpt (default: wanda)")
    p.add_argument("--policy", type=Path, help="a policy JSON file (overrides --method/--sparsity/--pattern/--allocation)")
    p.add_argument("--metric", help="a metric file from 'autoprune export', a named metric or an expression "
                   "such as 'mul(abs(W), X)'; replaces the policy's metric")
    p.add_argument("--update", help="weight update after the mask: none, sparsegpt (OBS) or admm "
                                    "(default: the method's or the policy's)")
    p.add_argument("--sparsity", type=float, help="fraction of weights to remove, in [0, 1) (default: 0.5; "
                   "an N:M pattern fixes it)")
    p.add_argument("--pattern", default="unstructured", help="unstructured, 2:4, 4:8 or any N:M")
    p.add_argument("--allocation", default="uniform", help="uniform, owl or alpha (AlphaPruning); "
                   "their parameters (owl_lambda, owl_m, alpha_eps) come from a --policy file")
    p.add_argument("--calib", default="c4", help="calibration data: file or named set, optional :START-END")
    p.add_argument("--calib-windows", type=int, default=128, help="calibration windows (default: 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", help="also report dense and pruned perplexity on this data")
    p.add_argument("--eval-windows", type=int, help="evaluate on the first N windows only")
    p.add_argument("--offload", action="store_true", help="keep the model in host memory and move one block at a "
                   "time to --device (prunes models larger than the device)")
    p.add_argument("--expert-allocation", default="uniform", help="mixture-of-experts: uniform, or tokens "
                   "(experts the router sends fewer calibration tokens lose more; the saved policy is explicit)")
    p.add_argument("--router-weighted", action="store_true", help="mixture-of-experts: weigh each routed token "
                   "by its router weight in the experts' statistics (MoE-Pruner)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    from autoprune.jobs.prune import PruneConfig, prune

    cfg = PruneConfig(model=args.model, out=args.out, method=args.method, sparsity=args.sparsity,
                      pattern=args.pattern, allocation=args.allocation, policy=args.policy, metric=args.metric,
                      update=args.update, calib=args.calib, calib_windows=args.calib_windows, seqlen=args.seqlen, seed=args.seed,
                      batch_size=args.batch_size, eval=args.eval, eval_windows=args.eval_windows,
                      device=args.device, dtype=args.dtype, offload=args.offload,
                      expert_allocation=args.expert_allocation, router_weighted=args.router_weighted)
    res = prune(cfg)
    rows = [("metric", res.policy.metric),
            ("pattern / allocation", f"{res.policy.pattern} / {res.policy.allocation}"),
            ("update", res.policy.update),
            ("target sparsity", f"{res.policy.sparsity:.4f}"),
            ("achieved sparsity", f"{res.report.sparsity:.4f}"),
            ("calibration", f"{cfg.calib_windows} x {cfg.seqlen} tokens of {cfg.calib}"),
            ("pruning seconds", f"{res.report.seconds:.1f}")]
    if res.perplexity is not None:
        rows.append((f"perplexity on {cfg.eval} (dense -> pruned)", f"{res.dense_perplexity:.3f} -> {res.perplexity:.3f}"))
    print_report(f"autoprune prune: {cfg.model}", rows + [("saved to", str(res.out))])
    return 0
