"""One module per command: an argparse parser and a thin adapter to one library call."""

from __future__ import annotations

import argparse
import os
import sys


def quiet_libraries() -> None:
    """Keep third-party progress bars and advice out of the command's own output (set before the
    libraries are imported: a command that needs none of them does not pay for importing them)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # a search sends its INFO lines to its log file
    if "transformers" in sys.modules:
        from transformers.utils import logging

        logging.set_verbosity_error()
        logging.disable_progress_bar()


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="hub id, model folder, llama2.c .bin, or alias (stories260K)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--dtype", default="auto", help="auto, float32, float16, bfloat16 (default: auto)")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per window (default: 2048)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default: 8)")


def print_report(title: str, rows: list[tuple[str, str]]) -> None:
    """A command's result: a two-column table of (field, value)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("field")
    table.add_column("value", justify="right")
    for field, value in rows:
        table.add_row(field, value)
    Console().print(table)
