"""``autoprune ui``: the MLflow UI on the same store the searches log to."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI on the searches' tracking store",
                       description="Serve the MLflow UI (and its REST API) for the autoprune tracking store.")
    p.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db",
                   help="MLflow backend store (default: sqlite:///runs/mlflow.db)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=1, help="server processes (default: 1; each loads MLflow)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from autoprune.tracking import check_uri

    uri = check_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is a tracking server already: open it in a browser")
        return 0
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    cmd = [mlflow if os.path.exists(mlflow) else "mlflow", "ui", "--backend-store-uri", uri,
           "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    print(f"MLflow UI on http://{args.host}:{args.port} (store {uri}); Ctrl-C stops it", flush=True)
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0
