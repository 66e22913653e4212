"""The leaderboard review notebook runs top to bottom on a real MLflow store and plots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autoprune.pruning.policy import Policy
from autoprune.tracking import Tracker, check_uri

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "leaderboard.ipynb"


def _entry(cid, loss, policy: Policy, strategy="bo"):
    return {"id": cid, "phase": "allocation", "strategy": strategy, "batches": None, "fidelity": 1.0,
            "policy": policy.to_dict(),
            "result": {"loss": loss, "sparsity": policy.sparsity, "seconds": 0.1, "tokens": 10, "error": None}}


def test_notebook_executes_and_plots(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    uri = check_uri(f"sqlite:///{tmp_path}/runs/mlflow.db")
    t = Tracker(uri, "autoprune/nb")
    t.log_candidate(_entry(1, 1.6, Policy(metric="wanda", sparsity=0.5), "random"))
    t.log_candidate(_entry(2, 1.4, Policy(metric="wanda", sparsity=0.5, allocation="explicit",
                                          block_ratios=(0.4, 0.5, 0.6))))
    t.log_candidate(_entry(3, 2.5, Policy(metric="magnitude", sparsity=0.6), "random"))
    assert t.flush(timeout=60)
    monkeypatch.setenv("AUTOPRUNE_TRACKING_URI", uri)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    assert "3 candidates in 1 searches; 3 at full fidelity" in text
    assert "Pareto front: 2 candidates" in text  # #1 is dominated by #2 (same sparsity, lower loss)
    assert "plotted 3 policies" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2
    assert not any(o.get("output_type") == "error" for o in outputs)
