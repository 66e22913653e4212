"""``autoprune eval``: perplexity of a model on a data set."""

from __future__ import annotations

import argparse
import json

from autoprune.commands import add_model_args, quiet_libraries


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="perplexity of a (pruned) model",
                       description="Perplexity over non-overlapping windows of a data set.")
    add_model_args(p)
    p.add_argument("--data", default="wikitext2", help="file or named set (tinystories, wikitext2, c4), optional :START-END")
    p.add_argument("--windows", type=int, help="evaluate the first N windows only")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    from autoprune.jobs.evaluate import EvalConfig, evaluate

    cfg = EvalConfig(model=args.model, data=args.data, seqlen=args.seqlen, windows=args.windows,
                     batch_size=args.batch_size, device=args.device, dtype=args.dtype)
    res = evaluate(cfg, progress=not args.json)
    if args.json:
        print(json.dumps(res))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"autoprune eval: {cfg.model} on {cfg.data}")
    for col in ("perplexity", "tokens", "windows", "sparsity"):
        table.add_column(col, justify="right")
    table.add_row(f"{res['perplexity']:.3f}", str(res["tokens"]), str(res["windows"]), f"{res['sparsity']:.4f}")
    Console().print(table)
    return 0
