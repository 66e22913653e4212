"""``autoprune leaderboard``: the best policies recorded in MLflow."""

from __future__ import annotations

import argparse

from autoprune.commands import quiet_libraries


def add_parser(sub) -> None:
    p = sub.add_parser("leaderboard", help="the best policies found so far, from MLflow",
                       description="The best full-fidelity candidates by proxy loss, with their validated perplexity.")
    p.add_argument("--experiment", help="one search's experiment (default: every autoprune experiment)")
    p.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db", help="MLflow tracking URI "
                                                                          "(default: sqlite:///runs/mlflow.db)")
    p.add_argument("--top", type=int, default=10, help="rows (default: 10)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    from rich.console import Console
    from rich.table import Table

    from autoprune.tracking import baselines, check_uri, leaderboard

    uri = check_uri(args.tracking_uri)
    rows = leaderboard(uri, args.experiment, args.top)
    table = Table(title=f"autoprune leaderboard ({args.tracking_uri})")
    for col in ("#", "search", "candidate", "strategy", "expression", "allocation", "proxy loss", "sparsity",
                "eval ppl"):
        table.add_column(col, justify="right" if col in ("#", "candidate", "proxy loss", "sparsity", "eval ppl")
                         else "left", overflow="fold")
    for i, r in enumerate(rows, 1):
        ppl = r["eval_perplexity"]
        table.add_row(str(i), r["search"], str(r["candidate"]), r["strategy"], r["expression"], r["allocation"],
                      f"{r['proxy_loss']:.4f}", f"{r['sparsity']:.4f}", f"{ppl:.3f}" if ppl is not None else "-")
    console = Console()
    console.print(table if rows else "no candidates recorded yet")
    searches = baselines(uri, args.experiment)
    if searches:
        console.print(_baselines_table(searches))
    return 0


def _baselines_table(searches: list[dict]):
    """Each search's validated winner beside its baselines (held-out perplexity)."""
    from rich.table import Table

    from autoprune.search.baselines import DEFAULT

    # the dense model first, then the default recipes (tracked with "_" for "+")
    rank = {n: i for i, n in enumerate(["dense", *DEFAULT.replace("+", "_").split(",")])}
    cols = sorted({name for s in searches for name in s["baselines"]}, key=lambda n: (rank.get(n, len(rank)), n))
    table = Table(title="winner and recipes (eval ppl, full protocol)")
    for col in ("search", "winner", *(c.replace("_", "+") for c in cols)):
        table.add_column(col, justify="left" if col == "search" else "right")
    for s in searches:
        cells = [s["baselines"].get(n) for n in cols]
        table.add_row(s["search"], *(f"{v:.3f}" if v is not None else "-" for v in (s["winner"], *cells)))
    return table
