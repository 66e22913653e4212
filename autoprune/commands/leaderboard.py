"""``autoprune leaderboard``: the searches' rankings, from MLflow, the validated winner first."""

from __future__ import annotations

import argparse
import csv
import json
import sys

from autoprune.commands import quiet_libraries

UPDATES = {"none": "-", "sparsegpt": "sgpt", "admm": "admm", "": ""}


def add_parser(sub) -> None:
    p = sub.add_parser("leaderboard", help="the best policies found so far, from MLflow",
                       description="The validated candidates and recipes by selection perplexity (each search's "
                                   "winner marked *), then the other full-fidelity candidates by proxy loss.")
    p.add_argument("--experiment", help="one search's experiment (default: every autoprune experiment)")
    p.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db", help="MLflow tracking URI "
                                                                          "(default: sqlite:///runs/mlflow.db)")
    p.add_argument("--top", type=int, default=10, help="rows (default: 10)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--wide", action="store_true", help="full expressions and allocations (wrapped)")
    out.add_argument("--json", action="store_true", help="the rows as JSON")
    out.add_argument("--csv", action="store_true", help="the rows as CSV")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    from autoprune.errors import UserError
    from autoprune.tracking import baselines, leaderboard, open_store

    if args.top <= 0:
        raise UserError(f"--top must be positive, got {args.top}")
    uri = open_store(args.tracking_uri)
    rows = leaderboard(uri, args.experiment, args.top)
    if args.json:
        print(json.dumps({"rows": rows, "recipes": baselines(uri, args.experiment)}, indent=2))
        return 0
    if args.csv:
        w = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else ["search"])
        w.writeheader()
        w.writerows(rows)
        return 0
    from rich.console import Console

    console = Console()
    console.print(_table(rows, args.wide, len({r["search"] for r in rows}) > 1, console.width) if rows
                  else f"no candidates recorded yet in {args.tracking_uri}")
    searches = baselines(uri, args.experiment)
    if searches:
        console.print(_baselines_table(searches))
    return 0


def _num(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _short(text: str) -> str:
    return (text.replace("sparsegpt", "sgpt").replace("explicit ", "").replace("uniform", "unif")
            .replace("+layers", "+L"))


def _table(rows: list[dict], wide: bool, several: bool, width: int = 80):
    """80 columns: short names, every column as wide as its content but the metric, which takes
    what is left and is cut with an ellipsis (``--wide``: every cell in full, wrapped)."""
    from rich import box
    from rich.table import Table

    head = ["#", *(["search"] if several else []), "id", "by", "metric", "alloc", "upd", "proxy", "select", "eval"]
    cells = [[f"{i}{'*' if r['winner'] else ''}", *([r["search"]] if several else []),
              _short(str(r["candidate"])), r["strategy"], r["expression"],
              r["allocation"] if wide else _short(r["allocation"]), UPDATES.get(r["update"], r["update"]),
              _num(r["proxy_loss"], 3), _num(r["select_perplexity"], 2), _num(r["eval_perplexity"], 2)]
             for i, r in enumerate(rows, 1)]
    t = Table(title="autoprune leaderboard (* winner; validated first)", box=box.SIMPLE_HEAD, padding=(0, 1),
              pad_edge=False)
    widths = [min(max(len(name), *(len(c[j]) for c in cells)), 10 if name == "search" else 99)
              for j, name in enumerate(head)]
    m = head.index("metric")
    left = width - (sum(widths) - widths[m]) - 3 * len(head)  # what the other columns and their padding leave
    for j, name in enumerate(head):
        if wide:
            t.add_column(name, overflow="fold")
        else:
            w = max(6, min(widths[m], left)) if j == m else widths[j]
            t.add_column(name, justify="right" if name in ("#", "id", "proxy", "select", "eval") else "left",
                         no_wrap=True, overflow="ellipsis", min_width=w, max_width=w)
    for c in cells:
        t.add_row(*c)
    return t


def _baselines_table(searches: list[dict]):
    """Each search's validated winner beside its baselines (held-out perplexity)."""
    from rich import box
    from rich.table import Table

    from autoprune.search.baselines import DEFAULT

    # the dense model first, then the default recipes (tracked with "_" for "+")
    rank = {n: i for i, n in enumerate(["dense", *DEFAULT.replace("+", "_").split(",")])}
    cols = sorted({name for s in searches for name in s["baselines"]}, key=lambda n: (rank.get(n, len(rank)), n))
    table = Table(title="winner and recipes (eval ppl)", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for col in ("search", "winner", *(c.replace("_", "+").replace("sparsegpt", "sgpt") for c in cols)):
        table.add_column(col, justify="left" if col == "search" else "right", overflow="ellipsis",
                         no_wrap=True, max_width=14 if col == "search" else None)
    for s in searches:
        cells = [s["baselines"].get(n) for n in cols]
        table.add_row(s["search"], *(f"{v:.2f}" if v is not None else "-" for v in (s["winner"], *cells)))
    return table
