"""The in-process executor runs the worker's own code on typed jobs: a whole search runs on it
without Ray, and its results are those the worker gives when called directly."""

from __future__ import annotations

from autoprune.messages import ProxyJob, ValidationJob
from autoprune.pruning.policy import Policy
from autoprune.search.budget import Budget
from autoprune.search.events import PhaseStarted, Scored
from autoprune.search.executor import InProcessExecutor
from autoprune.search.journal import Journal
from autoprune.search.runner import SearchRunner, SearchSettings
from autoprune.search.workers import WorkerSpec

SPEC = WorkerSpec("stories260K", calib_windows=8, proxy_windows=4, eval_windows=4, select_windows=4, seqlen=128,
                  gradients=False, device="cpu", dtype="float32")


def test_in_process_executor_runs_typed_jobs_and_a_whole_search(tmp_path):
    ex = InProcessExecutor.from_spec(SPEC)
    wanda, magnitude = Policy.from_method("wanda", 0.5), Policy.from_method("magnitude", 0.5)
    ex.submit(ProxyJob((1, 2), (wanda, magnitude)))  # stacked: one forward for both
    ex.submit(ValidationJob("dense", None, "eval"))
    assert ex.free == 0
    (job, results), = ex.wait(0)
    assert job.ids == (1, 2) and [r.ok for r in results] == [True, True]
    assert results[0].loss < results[1].loss and all(abs(r.sparsity - 0.5) < 1e-6 for r in results)
    assert results[0].masks == ex.worker.evaluate(wanda).masks  # the worker's own answer
    (job, dense), = ex.wait(0)
    assert job.split == "eval" and dense.ok and dense.sparsity == 0.0
    assert ex.free == 1 and ex.wait(0) == []

    journal = Journal(tmp_path / "journal.jsonl")
    settings = SearchSettings(("random",), {"random": {"spread": 0.1}}, top_k=1, finish_reserve=0.0)
    outcome = SearchRunner(ex, journal, Budget(20.0), Policy(sparsity=0.5), settings, tmp_path).run()
    assert any(isinstance(e, Scored) for e in journal.events)
    assert [e.phase for e in journal.events if isinstance(e, PhaseStarted)] == ["metric", "allocation", "validation"]
    assert outcome.best_id is not None and outcome.select_perplexity is not None
