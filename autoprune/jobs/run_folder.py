"""A search's run folder: its files, its lock, a new folder prepared, library logs sent to a file."""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import TYPE_CHECKING

from autoprune.errors import UserError

if TYPE_CHECKING:
    from autoprune.jobs.search import SearchConfig

CONFIG_FILE = "search_config.json"
JOURNAL_FILE = "journal.jsonl"
PROGRESS_FILE = "progress.json"
TRACKING_FILE = "tracking.json"
BEST_FILE = "best_policy.json"
CANDIDATES_FILE = "candidates.csv"
STARTUP_FILE = "startup.json"  # the workers' start-up steps, for the live view
LOG_FILE = "search.log"  # library log lines and warnings, kept out of the terminal
SUMMARY_FILE = "summary.json"


def prepare_out(cfg: SearchConfig, resume: bool) -> SearchConfig:
    """A new search gets an empty out folder and its config saved there."""
    out, stored = cfg.out, cfg.out / CONFIG_FILE
    if resume:
        return cfg
    if stored.is_file():
        raise UserError(f"{out} holds a search already: pass --resume to continue it, or choose another --out")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not an autoprune search folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(stored)
    return cfg


LIBRARY_LOGGERS = ("mlflow", "alembic", "ray", "urllib3", "filelock", "py.warnings", "autoprune")


def log_to_file(path: Path) -> None:
    """Library log lines (MLflow's INFO lines among them), Python warnings and autoprune's own
    warnings go to ``path`` in the run folder, not into the live view."""
    import logging

    import mlflow  # noqa: F401 - configures its logger when imported: replaced here

    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.captureWarnings(True)
    for name in LIBRARY_LOGGERS:
        log = logging.getLogger(name)
        log.handlers[:] = [handler]
        log.propagate = False
        log.setLevel(logging.INFO)


def lock(out: Path):
    f = open(out / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise UserError(f"{out} is in use by another running search") from None
    return f
