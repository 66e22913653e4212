"""MLflow tracking on a real embedded store: curves and the runs that matter (or a run per
candidate), resume without duplicates, the validated winner ranked first, read-only commands that
create nothing, and a one-line error for a store that cannot be reached."""

from __future__ import annotations

import time

import pytest

from autoprune.errors import UserError
from autoprune.pruning.policy import Policy
from autoprune.tracking import Tracker, check_uri, leaderboard, open_store


def _entry(cid: int, loss: float, metric: str = "wanda", batches=None, fidelity: float = 1.0,
           strategy: str = "random", t: float = 0.0) -> dict:
    return {"id": cid, "phase": "metric", "strategy": strategy, "batches": batches, "fidelity": fidelity, "t": t,
            "policy": Policy(metric=metric, sparsity=0.5).to_dict(),
            "result": {"loss": loss, "sparsity": 0.5, "seconds": 0.1, "tokens": 100, "error": None}}


@pytest.fixture
def uri(tmp_path):
    return check_uri(f"sqlite:///{tmp_path}/store/mlflow.db")


def test_candidates_nest_under_the_search_and_the_validated_rank_first(uri):
    t = Tracker(uri, "autoprune/a", params={"model": "m"}, mode="all")
    for cid, loss, metric in [(1, 2.0, "magnitude"), (2, 1.0, "wanda"), (3, 1.5, "ria")]:
        t.log_candidate(_entry(cid, loss, metric))
    t.log_candidate(_entry(4, 0.5, "wanda", batches=1, fidelity=0.5))  # low fidelity: not ranked
    assert t.flush(timeout=60)
    t.log_validation(_entry(3, 1.5, "ria"), {"select_perplexity": 22.0, "eval_perplexity": 23.5})
    t.log_validation(_entry(2, 1.0, "wanda"), {"select_perplexity": 25.0, "eval_perplexity": 26.0})
    t.finish({"best_proxy_loss": 1.0}, [], winner={"id": 3, "select_perplexity": 22.0, "eval_perplexity": 23.5})
    rows = leaderboard(uri, "a")
    assert [r["candidate"] for r in rows] == [3, 2, 1]  # validated by selection perplexity, then by proxy loss
    assert rows[0]["winner"] and not rows[1]["winner"]
    assert rows[0]["expression"] == "ria" and rows[0]["eval_perplexity"] == pytest.approx(23.5)
    assert rows[2]["eval_perplexity"] is None
    assert leaderboard(uri, "a") == leaderboard(uri, "a", direct=False)
    run = t.client.get_run(t.parent_run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["best_proxy_loss"] == 1.0


def test_resumed_tracker_skips_logged_candidates(uri):
    t = Tracker(uri, "autoprune/b", mode="all")
    t.log_candidate(_entry(1, 1.0))
    assert t.flush(timeout=60)
    again = Tracker(uri, "autoprune/b", parent_run_id=t.parent_run_id, mode="all")
    assert set(again.run_ids) == {1}
    again.log_candidate(_entry(1, 1.0))  # already there: ignored
    again.log_candidate(_entry(2, 0.7))
    assert again.flush(timeout=60)
    runs = again.client.search_runs([again.experiment_id], f"tags.`mlflow.parentRunId` = '{t.parent_run_id}'")
    assert sorted(r.data.tags["autoprune.candidate"] for r in runs) == ["1", "2"]


def test_leaderboard_across_searches_and_unknown_experiment(uri):
    for name, loss in [("autoprune/x", 1.0), ("autoprune/y", 0.5)]:
        t = Tracker(uri, name, mode="all")
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
    from autoprune.messages import ValidationResult
    from autoprune.search.baselines import report, tracking_metrics
    from autoprune.tracking import baselines

    policies = {"dense": None, "wanda": Policy(sparsity=0.5),
                "wanda+owl@0.1": Policy(sparsity=0.5, allocation="owl", owl_lambda=0.1)}
    rows = report(["wanda", "wanda+owl"], policies, {}, {"wanda": ValidationResult(31.0, 1.0)},
                  {"dense": ValidationResult(6.0, 1.0), "wanda": ValidationResult(30.0, 1.0)}, 24.0)
    assert rows[1]["improvement"] == pytest.approx(0.2) and rows[2]["skipped"].startswith("did not fit")
    assert rows[1]["select_perplexity"] == 31.0
    t = Tracker(uri, "autoprune/c")
    t.log_candidate(_entry(1, 1.0))
    t.finish({"best_eval_perplexity": 24.0, **tracking_metrics(rows)}, [])
    Tracker(uri, "autoprune/d").finish({"best_eval_perplexity": 20.0}, [])  # no baselines: not listed
    assert baselines(uri) == [{"search": "c", "winner": 24.0, "baselines": {"dense": 6.0, "wanda": 30.0}}]
    assert t.client.get_run(t.parent_run_id).data.metrics["improvement_vs_wanda"] == pytest.approx(0.2)


def test_top_mode_logs_curves_and_the_runs_that_matter_and_resumes_without_repeats(uri):
    entries = [_entry(i, 3.0 / i, strategy="gp" if i % 2 else "evo", t=10.0 * i) for i in range(1, 21)]
    t = Tracker(uri, "autoprune/top")
    for e in entries[:12]:
        t.log_candidate(e)
    assert t.flush(timeout=60)
    assert t.run_ids == {}  # no run per candidate
    history = {k: t.client.get_metric_history(t.parent_run_id, k) for k in ("best_proxy_loss/all", "best_proxy_loss/gp",
                                                                           "candidates_per_second/all")}
    assert [m.step for m in history["best_proxy_loss/all"]] == list(range(1, 13))
    assert [m.step for m in history["best_proxy_loss/gp"]] == list(range(1, 7))
    assert history["candidates_per_second/all"][0].value == pytest.approx(0.1)  # 3 candidates in 30 s
    again = Tracker(uri, "autoprune/top", parent_run_id=t.parent_run_id)  # resume: the journal replayed
    for e in entries:
        again.log_candidate(e)
    again.log_validation(entries[19], {"select_perplexity": 20.0})
    recipe = {"name": "sparsegpt+owl", "policy": Policy(sparsity=0.5, allocation="owl").to_dict(),
              "select_perplexity": 21.0, "perplexity": 22.0, "sparsity": 0.5}
    again.finish({}, [], runs=[entries[18], entries[19]], recipes=[{"name": "dense", "perplexity": 5.0}, recipe],
                 winner={"id": 20, "select_perplexity": 20.0, "eval_perplexity": None},
                 validated=[(entries[17], {"select_perplexity": 30.0})])  # validated, never logged: written now
    steps = [m.step for m in again.client.get_metric_history(t.parent_run_id, "best_proxy_loss/all")]
    assert steps == list(range(1, 21))  # no point twice
    runs = again.client.search_runs([again.experiment_id], f"tags.`mlflow.parentRunId` = '{t.parent_run_id}'")
    assert sorted(r.data.tags.get("autoprune.candidate", r.data.tags.get("autoprune.recipe")) for r in runs) == \
        ["18", "19", "20", "sparsegpt+owl"]
    parent = again.client.get_run(t.parent_run_id)
    assert parent.data.tags["autoprune.winner"] == "candidate 20"
    assert "sparsegpt+owl | 21.000 | 22.000" in parent.data.tags["mlflow.note.content"]
    assert [r["candidate"] for r in leaderboard(uri, "top")][:3] == [20, "sparsegpt+owl", 18]
    # the SQLite store read directly answers as MLflow's client does
    assert leaderboard(uri, "top", 30) == leaderboard(uri, "top", 30, direct=False)


def test_read_only_commands_create_no_store(tmp_path, monkeypatch, capsys):
    from autoprune.cli import main

    monkeypatch.chdir(tmp_path)
    for argv in (["leaderboard"], ["ui"], ["leaderboard", "--tracking-uri", f"sqlite:///{tmp_path}/x/db"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "no tracking store" in err and err.count("\n") == 1
    (tmp_path / "not.db").write_text("hello")
    with pytest.raises(UserError, match="not an MLflow store"):
        open_store(f"sqlite:///{tmp_path}/not.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not.db"]
