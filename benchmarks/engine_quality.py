"""Perplexity of every built-in method at several sparsities, under the full sequential protocol.

Calibration: 64 windows of 256 tokens drawn (seed 0) from TinyStories stories 0-499; evaluation:
every 256-token window of stories 500-999 (the project's split). Other models and data by flag.

    python benchmarks/engine_quality.py
    python benchmarks/engine_quality.py --model facebook/opt-125m --calib c4 --eval wikitext2 --seqlen 2048 --windows 128
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace

from rich.console import Console
from rich.table import Table

from autoprune.evaluation import perplexity
from autoprune.jobs.common import calibration_windows, evaluation_windows
from autoprune.models import load_model
from autoprune.pruning.engine import prune_sequential
from autoprune.pruning.policy import Policy

SETTINGS = [("50%", 0.5, "unstructured"), ("60%", 0.6, "unstructured"), ("70%", 0.7, "unstructured"),
            ("2:4", 0.5, "2:4")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="stories260K")
    ap.add_argument("--calib", default="tinystories:0-499")
    ap.add_argument("--eval", default="tinystories:500-999")
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--methods", default="magnitude,wanda,ria,sparsegpt")
    ap.add_argument("--allocation", default="uniform", help="uniform, owl or alpha (for the unstructured columns)")
    ap.add_argument("--alpha-eps", type=float, default=Policy.alpha_eps,
                    help="AlphaPruning's epsilon (with --allocation alpha)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    lm = load_model(args.model, device=args.device)
    calib = calibration_windows(lm.tokenizer, args.calib, args.windows, args.seqlen, 0)
    evalw = evaluation_windows(lm.tokenizer, args.eval, args.seqlen)
    dense = perplexity(lm.model, evalw, progress=True).perplexity

    table = Table(title=f"{args.model}: perplexity on {args.eval} ({len(evalw)} x {args.seqlen} tokens), "
                        f"calibration {args.windows} x {args.seqlen} of {args.calib}; dense {dense:.3f}")
    table.add_column("method")
    for label, _, _ in SETTINGS:
        table.add_column(label, justify="right")
    table.add_column("prune s (each)", justify="right")
    for method in args.methods.split(","):
        cells, secs = [], []
        for _, sparsity, pattern in SETTINGS:
            model = copy.deepcopy(lm.model)
            alloc = args.allocation if pattern == "unstructured" else "uniform"
            t0 = time.perf_counter()
            policy = replace(Policy.from_method(method, sparsity, pattern, alloc), alpha_eps=args.alpha_eps)
            prune_sequential(model, policy, calib, progress=False)
            secs.append(time.perf_counter() - t0)
            cells.append(f"{perplexity(model, evalw).perplexity:.3f}")
        table.add_row(method, *cells, f"{sum(secs) / len(secs):.1f}")
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
