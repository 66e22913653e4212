"""``autoprune export``: a metric (file, name or expression) as JSON, a Python function or LaTeX."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="write a metric as JSON, a standalone Python function or LaTeX",
                       description="Export a pruning metric. METRIC is a metric file (JSON or a bare expression), "
                                   "a policy JSON, a named metric, or an expression such as 'mul(abs(W), X)'.")
    p.add_argument("metric", metavar="METRIC_OR_FILE")
    p.add_argument("--format", default="json", choices=("json", "python", "latex"))
    p.add_argument("--out", type=Path, help="write here instead of standard output")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from autoprune.export import export_metric, load_metric

    text = export_metric(load_metric(args.metric), args.format)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
