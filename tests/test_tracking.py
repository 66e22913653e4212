"""MLflow tracking on a real embedded store: nested candidate runs, resume without duplicates,
leaderboard order, and a one-line error for a store that cannot be reached."""

from __future__ import annotations

import time

import pytest

from autoprune.errors import UserError
from autoprune.pruning.policy import Policy
from autoprune.tracking import Tracker, check_uri, leaderboard


def _entry(cid: int, loss: float, metric: str = "wanda", batches=None, fidelity: float = 1.0) -> dict:
    return {"id": cid, "phase": "metric", "strategy": "random", "batches": batches, "fidelity": fidelity,
            "policy": Policy(metric=metric, sparsity=0.5).to_dict(),
            "result": {"loss": loss, "sparsity": 0.5, "seconds": 0.1, "tokens": 100, "error": None}}


@pytest.fixture
def uri(tmp_path):
    return check_uri(f"sqlite:///{tmp_path}/store/mlflow.db")


def test_candidates_nest_under_the_search_and_rank(uri):
    t = Tracker(uri, "autoprune/a", params={"model": "m"})
    for cid, loss, metric in [(1, 2.0, "magnitude"), (2, 1.0, "wanda"), (3, 1.5, "ria")]:
        t.log_candidate(_entry(cid, loss, metric))
    t.log_candidate(_entry(4, 0.5, "wanda", batches=1, fidelity=0.5))  # low fidelity: not ranked
    assert t.flush(timeout=60)
    t.log_validation(2, {"eval_perplexity": 23.5})
    t.finish({"best_proxy_loss": 1.0}, [])
    rows = leaderboard(uri, "a")
    assert [r["candidate"] for r in rows] == [2, 3, 1]
    assert rows[0]["expression"] == "wanda" and rows[0]["eval_perplexity"] == pytest.approx(23.5)
    assert rows[1]["eval_perplexity"] is None
    run = t.client.get_run(t.parent_run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["best_proxy_loss"] == 1.0


def test_resumed_tracker_skips_logged_candidates(uri):
    t = Tracker(uri, "autoprune/b")
    t.log_candidate(_entry(1, 1.0))
    assert t.flush(timeout=60)
    again = Tracker(uri, "autoprune/b", parent_run_id=t.parent_run_id)
    assert set(again.run_ids) == {1}
    again.log_candidate(_entry(1, 1.0))  # already there: ignored
    again.log_candidate(_entry(2, 0.7))
    assert again.flush(timeout=60)
    runs = again.client.search_runs([again.experiment_id], f"tags.`mlflow.parentRunId` = '{t.parent_run_id}'")
    assert sorted(r.data.tags["autoprune.candidate"] for r in runs) == ["1", "2"]


def test_leaderboard_across_searches_and_unknown_experiment(uri):
    for name, loss in [("autoprune/x", 1.0), ("autoprune/y", 0.5)]:
        t = Tracker(uri, name)
        t.log_candidate(_entry(1, loss))
        t.flush(timeout=60)
    assert [r["search"] for r in leaderboard(uri)] == ["y", "x"]
    with pytest.raises(UserError, match="no experiment"):
        leaderboard(uri, "missing")


def test_unreachable_tracking_server_is_one_quick_line():
    t0 = time.monotonic()
    with pytest.raises(UserError, match="unreachable") as e:
        check_uri("http://127.0.0.1:9")  # discard port: nothing listens
    assert "\n" not in str(e.value) and time.monotonic() - t0 < 10


def test_baselines_of_each_search_from_its_run(uri):
    from autoprune.search.baselines import report, tracking_metrics
    from autoprune.tracking import baselines

    policies = {"dense": None, "wanda": Policy(sparsity=0.5),
                "wanda+owl@0.1": Policy(sparsity=0.5, allocation="owl", owl_lambda=0.1)}
    rows = report(["wanda", "wanda+owl"], policies, {}, {"wanda": {"perplexity": 31.0}},
                  {"dense": {"perplexity": 6.0}, "wanda": {"perplexity": 30.0}}, 24.0)
    assert rows[1]["improvement"] == pytest.approx(0.2) and rows[2]["skipped"].startswith("did not fit")
    assert rows[1]["select_perplexity"] == 31.0
    t = Tracker(uri, "autoprune/c")
    t.log_candidate(_entry(1, 1.0))
    t.finish({"best_eval_perplexity": 24.0, **tracking_metrics(rows)}, [])
    Tracker(uri, "autoprune/d").finish({"best_eval_perplexity": 20.0}, [])  # no baselines: not listed
    assert baselines(uri) == [{"search": "c", "winner": 24.0, "baselines": {"dense": 6.0, "wanda": 30.0}}]
    assert t.client.get_run(t.parent_run_id).data.metrics["improvement_vs_wanda"] == pytest.approx(0.2)
