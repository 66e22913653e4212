"""``autoprune ui``: the MLflow UI on the store the searches log to, as one light server.

``mlflow ui`` starts a server that forks workers and job consumers (eleven processes, about 2 GB)
and outlives a SIGTERM to its command. Here MLflow's FastAPI app runs in this process, in one
uvicorn server with job execution off: it stops when the command stops, however it is stopped.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI on the searches' tracking store",
                       description="Serve the MLflow UI (and its REST API) for the autoprune tracking store, "
                                   "in this process; Ctrl-C or SIGTERM stops it.")
    p.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db",
                   help="MLflow backend store (default: sqlite:///runs/mlflow.db)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from autoprune.errors import UserError
    from autoprune.tracking import open_store

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    uri = open_store(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is a tracking server already: open it in a browser")
        return 0
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # MLflow's own imports, not the user's
    import uvicorn
    from mlflow.server import ARTIFACT_ROOT_ENV_VAR, BACKEND_STORE_URI_ENV_VAR, SERVE_ARTIFACTS_ENV_VAR

    os.environ.update({BACKEND_STORE_URI_ENV_VAR: uri, SERVE_ARTIFACTS_ENV_VAR: "false",
                       ARTIFACT_ROOT_ENV_VAR: os.path.abspath("runs/mlartifacts"),
                       "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "_MLFLOW_SGI_NAME": "uvicorn"})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # uvicorn's own handler would wait for clients
    print(f"MLflow UI on http://{args.host}:{args.port} (store {uri}); Ctrl-C stops it", flush=True)
    try:
        uvicorn.run("mlflow.server.fastapi_app:app", host=args.host, port=args.port, workers=1, log_level="warning")
    except KeyboardInterrupt:
        pass
    return 0
