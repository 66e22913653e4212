"""``autoprune export``: a metric as JSON, a Python function or LaTeX; a policy as an llm-compressor
recipe or EvoPress levels."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

POLICY_FORMATS = ("llmcompressor", "levels")


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a metric as JSON, Python or LaTeX; a policy as an llm-compressor "
                                      "recipe or EvoPress levels",
                       description="Export a pruning metric or policy. METRIC is a metric file (JSON or a bare "
                                   "expression), a policy JSON, a named metric, or an expression such as "
                                   "'mul(abs(W), X)'; --format llmcompressor or levels takes a policy JSON file.")
    p.add_argument("metric", metavar="METRIC_OR_FILE")
    p.add_argument("--format", default="json", choices=("json", "python", "latex", *POLICY_FORMATS))
    p.add_argument("--model", help="llmcompressor, levels: the model the policy is for, as 'autoprune prune' "
                                   "takes it (needed for levels and for any allocation but uniform)")
    p.add_argument("--calib", default="c4", help="allocation owl: calibration data (default: c4)")
    p.add_argument("--calib-windows", type=int, default=128, help="allocation owl: windows (default: 128)")
    p.add_argument("--seqlen", type=int, default=2048, help="allocation owl: tokens per window (default: 2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--levels", type=int, default=8, help="levels: EvoPress database levels each way (default: 8)")
    p.add_argument("--weights-diff", type=int, help="levels: weights between adjacent levels "
                                                    "(default: EvoPress's, 0.5 min(S, 1-S) / levels * hidden^2)")
    p.add_argument("--out", type=Path, help="write here instead of standard output")
    p.set_defaults(run=run)


def _export_policy(args: argparse.Namespace) -> str:
    from autoprune.errors import UserError
    from autoprune.export_recipes import modifier, to_levels, to_llmcompressor
    from autoprune.pruning.policy import Policy

    policy = Policy.load(Path(args.metric))
    if args.model is None and (args.format == "levels" or policy.allocation != "uniform"):
        raise UserError(f"--format {args.format} of a policy with allocation {policy.allocation!r} needs --model")
    model = windows = None
    if args.model is not None:
        from autoprune.commands import quiet_libraries
        from autoprune.models import load_model

        quiet_libraries()
        lm = load_model(args.model, "float32")
        model = lm.model
        if policy.allocation == "owl":
            from autoprune.jobs.common import calibration_windows

            windows = calibration_windows(lm.tokenizer, args.calib, args.calib_windows, args.seqlen, args.seed)
    if args.format == "levels":
        return to_levels(policy, model, args.levels, args.weights_diff, windows)
    text = to_llmcompressor(policy, model, windows)
    if notice := modifier(policy)[1]:
        print(f"autoprune: {notice}", file=sys.stderr)
    return text


def run(args: argparse.Namespace) -> int:
    if args.format in POLICY_FORMATS:
        text = _export_policy(args)
    else:
        import json

        from autoprune.errors import UserError
        from autoprune.export import export_metric, load_metric, load_policy

        policy = load_policy(args.metric)
        if policy is not None and policy.metric == "sparsegpt":  # SparseGPT's OBS mask: a solver, not a score
            if args.format != "json":
                raise UserError(f"{args.metric}: metric 'sparsegpt' is SparseGPT's OBS solver, not a score; "
                                "export the policy with --format json or llmcompressor")
            text = json.dumps({"format": "autoprune-policy", "version": 1, "policy": policy.to_dict()}, indent=2) + "\n"
        else:
            text = export_metric(load_metric(args.metric), args.format, policy=policy)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
