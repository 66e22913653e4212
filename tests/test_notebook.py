"""The leaderboard review notebook runs top to bottom on a real MLflow store and plots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autoprune.pruning.policy import Policy
from autoprune.tracking import Tracker, check_uri

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "leaderboard.ipynb"


def _entry(cid, loss, policy: Policy, strategy="bo"):
    return {"id": cid, "phase": "allocation", "strategy": strategy, "batches": None, "fidelity": 1.0, "t": float(cid),
            "policy": policy.to_dict(),
            "result": {"loss": loss, "sparsity": policy.sparsity, "seconds": 0.1, "tokens": 10, "error": None}}


def test_notebook_executes_and_plots(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    from autoprune.jobs.search_results import write_candidates
    from autoprune.search.validator import Outcome

    uri = check_uri(f"sqlite:///{tmp_path}/runs/mlflow.db")
    t = Tracker(uri, "autoprune/nb")
    entries = [_entry(1, 1.6, Policy(metric="wanda", sparsity=0.5), "random"),
               _entry(2, 1.4, Policy(metric="wanda", sparsity=0.5, allocation="explicit", block_ratios=(0.4, 0.5, 0.6))),
               _entry(3, 2.5, Policy(metric="magnitude", sparsity=0.6), "random")]
    for e in entries:
        t.log_candidate(e)
    t.log_validation(entries[1], {"select_perplexity": 20.0, "eval_perplexity": 21.0})
    outcome = Outcome(Policy(), 2, 1.4, 21.0, [{"id": 2, "select_perplexity": 20.0, "eval_perplexity": 21.0}], [])
    table = write_candidates(entries, outcome, tmp_path / "candidates.csv")
    t.finish({"best_eval_perplexity": 21.0, "baseline_wanda_ppl": 25.0, "baseline_dense_ppl": 9.0}, [table],
             runs=entries, winner={"id": 2, "select_perplexity": 20.0, "eval_perplexity": 21.0})
    monkeypatch.setenv("AUTOPRUNE_TRACKING_URI", uri)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs)
    assert "1 searches; winners: nb: candidate 2" in text
    assert "compared 1 searches with their recipes" in text
    assert "3 candidates; 3 one-shot at full fidelity" in text
    assert "Pareto front: 2 candidates" in text  # #1 is dominated by #2 (same sparsity, lower loss)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 3
    assert not any(o.get("output_type") == "error" for o in outputs)
    ranking = next(o for o in nb.cells[1].outputs if "text/plain" in o.get("data", {}))["data"]["text/plain"]
    assert ranking.splitlines()[1].split()[1:3] == ["nb", "2"]  # the validated winner is the first row
