"""``autoprune search`` end to end on the real model with real Ray workers and MLflow:
a search killed with SIGKILL, resumed, a worker killed in the resumed run; the leaderboard
and the MLflow UI's REST API on the same store; bad input as one line with nothing lost."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from autoprune.pruning.policy import Policy

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "autoprune.cli"]
SMALL = ["--model", "stories260K", "--sparsity", "0.5", "--strategies", "random", "--workers", "1",
         "--calib-windows", "16", "--proxy-windows", "8", "--eval-windows", "16", "--top-k", "2",
         "--log-candidates", "all"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(CLI + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _journal(journal: Path) -> list[dict]:
    """The complete events of a journal the search may be writing: a last line without its
    newline is still being written."""
    if not journal.exists():
        return []
    text = journal.read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


def _results(journal: Path) -> dict[int, dict]:
    return {e["id"]: e["result"] for e in _journal(journal) if e["event"] == "result"}


def _wait_for(cond, timeout: float, proc: subprocess.Popen) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < end, "timed out"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("search")
    out = cwd / "runs" / "s"
    journal = out / "journal.jsonl"
    first = _start(["search", *SMALL, "--budget", "120s", "--out", "runs/s"], cwd)
    _wait_for(lambda: len(_results(journal)) >= 3, 150, first)
    os.killpg(first.pid, signal.SIGKILL)  # the driver and everything it started, mid-search
    first.wait()
    before = _results(journal)
    old_pids = json.loads((out / "workers.json").read_text())["pids"]

    resumed = _start(["search", "--resume", "--out", "runs/s", "--save-model"], cwd)
    _wait_for(lambda: len(_results(journal)) > len(before)
              and json.loads((out / "workers.json").read_text())["pids"] != old_pids, 150, resumed)
    os.kill(json.loads((out / "workers.json").read_text())["pids"][0], signal.SIGKILL)  # busy: mid-candidate
    text, _ = resumed.communicate(timeout=200)
    return {"cwd": cwd, "out": out, "before": before, "rc": resumed.returncode, "text": text}


def test_resume_keeps_every_completed_candidate_and_finishes(scenario):
    assert scenario["rc"] == 0, scenario["text"]
    after = _results(scenario["out"] / "journal.jsonl")
    for cid, res in scenario["before"].items():
        assert json.dumps(after[cid]) == json.dumps(res)
    assert len(after) > len(scenario["before"])
    policy = Policy.load(scenario["out"] / "best_policy.json")
    summary = json.loads((scenario["out"] / "summary.json").read_text())
    assert policy.sparsity == 0.5
    recipes = {r["name"]: r for r in summary["baselines"] if "skipped" not in r and r["name"] != "dense"}
    chosen = [v["select_perplexity"] for v in summary["validated"]] + [r["select_perplexity"] for r in recipes.values()]
    if summary["recipe_returned"]:  # a recipe beat every candidate on the selection split: it is returned
        assert policy.meta["candidate"] is None and summary["recipe_returned"] in policy.meta["note"]
        assert summary["best_select_perplexity"] == min(chosen)
    elif summary["validated"]:  # the best on the selection split among the validated (never the eval data)
        assert policy.meta["candidate"] in after and summary["best_select_perplexity"] == min(chosen)
    else:  # stopped before validation: the best by proxy loss
        assert summary["best_proxy_loss"] == min(r["loss"] for r in after.values())


def test_pruned_model_is_saved_and_loads(scenario):
    from autoprune.models import load_model
    from autoprune.pruning.engine import model_sparsity

    lm = load_model(str(scenario["out"] / "model"), "float32", "cpu")
    assert model_sparsity(lm.model)[0] == pytest.approx(0.5, abs=0.01)


def test_killed_worker_is_replaced(scenario):
    summary = json.loads((scenario["out"] / "summary.json").read_text())
    assert summary["pool"]["replaced"] >= 1


def test_every_candidate_is_in_mlflow_once(scenario):
    from mlflow.tracking import MlflowClient

    track = json.loads((scenario["out"] / "tracking.json").read_text())
    assert track["uri"] == "sqlite:///runs/mlflow.db"  # the default store, relative to where the search ran
    client = MlflowClient(f"sqlite:///{scenario['cwd']}/runs/mlflow.db")
    exp = client.get_experiment_by_name(track["experiment"])
    runs = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{track['parent_run_id']}' and "
                              "tags.`autoprune.kind` = 'candidate'")
    ids = [int(r.data.tags["autoprune.candidate"]) for r in runs]
    assert sorted(ids) == sorted(_results(scenario["out"] / "journal.jsonl"))
    assert client.get_run(track["parent_run_id"]).info.status == "FINISHED"


def test_leaderboard_lists_the_search(scenario):
    p = subprocess.run(CLI + ["leaderboard", "--experiment", "s"], cwd=scenario["cwd"], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert p.returncode == 0, p.stderr
    assert "proxy" in p.stdout and "random" in p.stdout


RL = ["--model", "stories260K", "--sparsity", "0.5", "--strategies", "rl", "--calib-windows", "16",
      "--proxy-windows", "8", "--eval-windows", "16", "--top-k", "2", "--baselines", "wanda,wanda+owl",
      "--owl-lambdas", "0.08,0.15"]


def _events(journal: Path, kind: str) -> list[dict]:
    return [e for e in _journal(journal) if e["event"] == kind]


@pytest.fixture(scope="module")
def rl_search(tmp_path_factory):
    """An RL search killed mid-allocation, resumed, killed again once a baseline is validated
    (when that comes before it finishes) and resumed to the end."""
    cwd = tmp_path_factory.mktemp("rl")
    journal = cwd / "runs" / "rl" / "journal.jsonl"
    first = _start(["search", *RL, "--budget", "100s", "--out", "runs/rl"], cwd)
    _wait_for(lambda: len(_results(journal)) >= 3, 150, first)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = set(_results(journal))
    proc = _start(["search", "--resume", "--out", "runs/rl"], cwd)
    end = time.monotonic() + 200
    while proc.poll() is None and not _events(journal, "baseline") and time.monotonic() < end:
        time.sleep(0.1)
    if proc.poll() is None:  # validating: a resume must not validate the journalled baselines again
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc = _start(["search", "--resume", "--out", "runs/rl"], cwd)
    text, _ = proc.communicate(timeout=200)
    return {"cwd": cwd, "out": cwd / "runs" / "rl", "before": before, "rc": proc.returncode, "text": text}


def test_rl_episodes_get_per_step_rewards_in_every_session(rl_search):
    assert rl_search["rc"] == 0, rl_search["text"]
    episodes = {e["id"]: e["tag"]["damages"] for e in _events(rl_search["out"] / "journal.jsonl", "submit")}
    resumed = [cid for cid in episodes if cid not in rl_search["before"]]
    assert len(episodes) >= 4 and resumed
    for damages in episodes.values():  # one per block; a step without the oracle would be exactly 0
        assert len(damages) == 5 and all(d != 0 for d in damages) and sum(damages) > 0


def test_baselines_are_validated_once_and_reported_beside_the_winner(rl_search):
    from mlflow.tracking import MlflowClient

    from autoprune.search.baselines import recipe

    out = rl_search["out"]
    names = [e["name"] for e in _events(out / "journal.jsonl", "baseline")]
    assert names and len(names) == len(set(names))  # none validated twice across the sessions
    reports = [e["key"] for e in _events(out / "journal.jsonl", "report")]
    assert len(reports) == len(set(map(str, reports)))
    rows = json.loads((out / "summary.json").read_text())["baselines"]
    assert [r["name"] for r in rows] == ["dense", "wanda", "wanda+owl"]
    done = {r["name"]: r for r in rows if "skipped" not in r}
    assert "dense" in done and set(done) - {"dense"} <= {recipe(n) for n in names}
    assert all(r["skipped"] == "did not fit in the validation time left" for r in rows if "skipped" in r)
    selected = {e["name"]: e["result"]["perplexity"] for e in _events(out / "journal.jsonl", "baseline")}
    for name, r in done.items():
        if name != "dense":
            assert r["policy"]["metric"] == "wanda" and r["policy"]["allocation"] == ("owl" if "owl" in name else "uniform")
            assert r["sparsity"] == pytest.approx(0.5, abs=0.01) and r["perplexity"] > done["dense"]["perplexity"]
            # OWL's lambda is the one with the lowest selection perplexity
            assert r["select_perplexity"] == min(v for k, v in selected.items() if recipe(k) == name)
    assert "recipe: dense" in rl_search["text"] and "recipe: wanda" in rl_search["text"]
    track = json.loads((out / "tracking.json").read_text())
    client = MlflowClient(f"sqlite:///{rl_search['cwd']}/runs/mlflow.db")
    metrics = client.get_run(track["parent_run_id"]).data.metrics
    assert metrics["baseline_dense_ppl"] == pytest.approx(done["dense"]["perplexity"])
    p = subprocess.run(CLI + ["leaderboard", "--experiment", "rl"], cwd=rl_search["cwd"], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert p.returncode == 0 and "winner and recipes" in p.stdout, p.stderr


def test_mlflow_holds_the_runs_that_matter_and_names_the_winner(rl_search):
    """--log-candidates top (the default): the validated candidates, each strategy's best and the
    recipes as nested runs, every candidate in candidates.csv; the winner tagged, linked and ranked
    first by the leaderboard."""
    import csv

    from mlflow.tracking import MlflowClient

    out = rl_search["out"]
    summary = json.loads((out / "summary.json").read_text())
    track = json.loads((out / "tracking.json").read_text())
    client = MlflowClient(f"sqlite:///{rl_search['cwd']}/runs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(track["experiment"]).experiment_id],
                              f"tags.`mlflow.parentRunId` = '{track['parent_run_id']}'")
    candidates = [r for r in runs if r.data.tags["autoprune.kind"] == "candidate"]
    recipes = {r.data.tags["autoprune.recipe"]: r for r in runs if r.data.tags["autoprune.kind"] == "recipe"}
    assert {v["id"] for v in summary["validated"]} <= {int(r.data.tags["autoprune.candidate"]) for r in candidates}
    assert len(candidates) <= len(summary["validated"]) + 3  # and one strategy's best three
    assert set(recipes) == {r["name"] for r in summary["baselines"] if "skipped" not in r and r["name"] != "dense"}
    for r in recipes.values():
        assert r.data.metrics["select_perplexity"] > 0 and r.data.metrics["eval_perplexity"] > 0
    with open(out / "candidates.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["id"]) for r in rows) == sorted(_results(out / "journal.jsonl"))
    parent = client.get_run(track["parent_run_id"])
    winner = summary["winner"]
    if winner is not None:
        label = f"candidate {winner['id']}" if "id" in winner else f"recipe {winner['name']}"
        assert parent.data.tags["autoprune.winner"] == label and label in parent.data.tags["mlflow.note.content"]
        assert client.get_run(parent.data.tags["autoprune.winner_run_id"]).data.tags["autoprune.winner"] == "true"
        assert summary["ranking"][0]["select_perplexity"] == summary["best_select_perplexity"]
    assert any(k.startswith("best_proxy_loss/") for k in parent.data.metrics)
    p = subprocess.run(CLI + ["leaderboard", "--experiment", "rl", "--json"], cwd=rl_search["cwd"],
                       capture_output=True, text=True, timeout=120)
    rows = json.loads(p.stdout)["rows"]
    assert rows[0]["winner"] == (winner is not None) and rows[0]["select_perplexity"] is not None
    for cols in (80, 160):
        p = subprocess.run(CLI + ["leaderboard"], cwd=rl_search["cwd"], capture_output=True, text=True,
                           timeout=120, env={**os.environ, "COLUMNS": str(cols)})
        assert p.returncode == 0 and max(map(len, p.stdout.splitlines())) <= cols, p.stdout


def test_remote_damage_interleaves_with_pool_jobs_and_survives_its_worker(tmp_path):
    import ray

    from autoprune.jobs.cluster import ray_temp_dir
    from autoprune.messages import ProxyJob, ValidationJob
    from autoprune.search.executor import InProcessExecutor
    from autoprune.search.rl_env import make_units
    from autoprune.search.pool import WorkerPool
    from autoprune.search.workers import WorkerSpec

    def finish(pool):
        end = time.monotonic() + 120
        while not (done := pool.wait(1.0)):
            assert time.monotonic() < end
        return done[0]

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=ray_temp_dir(tmp_path))
    try:
        spec = WorkerSpec("stories260K", calib_windows=8, proxy_windows=8, eval_windows=8, seqlen=128,
                          gradients=False, device="cpu", dtype="float32")
        pool = WorkerPool(spec, 1)
        units = make_units(tuple(pool.info["block_sizes"]), "block")
        base = Policy.from_method("wanda", 0.5)
        # typed jobs cross Ray as they are, and come back as the same worker code gives them in process
        here = InProcessExecutor.from_spec(spec)
        results = []
        for job in (ProxyJob((1, 2), (base, Policy.from_method("magnitude", 0.5))),
                    ValidationJob("wanda", base, "select")):
            pool.submit(job)
            here.submit(job)
            (remote_job, remote), ((local_job, local),) = finish(pool), here.wait(0)
            assert remote_job == job == local_job
            results.append((remote, local))
        (remote, local), (remote_ppl, local_ppl) = results
        assert [r.masks for r in remote] == [r.masks for r in local] and all(r.ok for r in remote)
        assert [r.loss for r in remote] == pytest.approx([r.loss for r in local], rel=1e-5)
        assert remote_ppl.ok and remote_ppl.perplexity == pytest.approx(local_ppl.perplexity, rel=1e-5)
        assert remote_ppl.block_ratios == local_ppl.block_ratios
        damage = pool.damage(base)
        assert damage.error is None and damage.features(units).shape == (5, 2)
        damage.reset()
        alone = [damage.step(u, r) for u, r in zip(units, (0.4, 0.6, 0.5))]
        damage.reset()
        interleaved = [damage.step(units[0], 0.4)]
        pool.submit(ProxyJob((3,), (base,)))  # a pool job between two steps, on the same worker
        assert finish(pool)[1][0].error is None and pool.free == 1
        interleaved += [damage.step(units[1], 0.6), damage.step(units[2], 0.5)]
        assert interleaved == alone and all(d > 0 for d in alone)

        ray.kill(pool.actors[0])  # the worker dies mid-episode: the steps left report no damage
        assert damage.step(units[3], 0.5) == 0.0 and damage.lost_steps == 1
        pool.submit(ProxyJob((4,), (base,)))  # the pool finds it dead, replaces it, retries
        assert finish(pool)[1][0].error is None and pool.replaced == 1
        damage.reset()  # the next episode rebuilds the block damage on the replacement
        assert [damage.step(u, r) for u, r in zip(units, (0.4, 0.6, 0.5))] == pytest.approx(alone)
        damage.close()
        assert damage.step(units[3], 0.5) == 0.0 and damage.lost_steps == 2
    finally:
        ray.shutdown()


def test_baselines_choice_and_bad_input(capsys):
    from autoprune.search.baselines import baseline_policies

    todo, skipped = baseline_policies(Policy.from_method("wanda", 0.5, "2:4"), ["sparsegpt", "sparsegpt+owl"])
    assert list(todo) == ["dense", "sparsegpt"] and todo["dense"] is None and "2:4" in skipped["sparsegpt+owl"]
    assert todo["sparsegpt"] == Policy.from_method("sparsegpt", 0.5, "2:4")
    todo, _ = baseline_policies(Policy(sparsity=0.7), ["wanda+owl"], (0.05, 0.2))
    assert list(todo) == ["dense", "wanda+owl@0.05", "wanda+owl@0.2"]
    assert [p.owl_lambda for p in list(todo.values())[1:]] == [0.05, 0.2]
    assert all(p.allocation == "owl" and p.sparsity == 0.7 for p in list(todo.values())[1:])
    assert baseline_policies(Policy(), []) == ({}, {})
    _one_line_error(["search", *RL, "--baselines", "wanda,best"], capsys, "give distinct recipes")
    _one_line_error(["search", *RL, "--owl-lambdas", "0.1,x"], capsys, "owl-lambdas")
    _one_line_error(["search", *RL, "--updates", "none,obs"], capsys, "unknown update 'obs'")
    _one_line_error(["search", *RL, "--select", "wikitext2", "--eval", "wikitext2"], capsys, "must be chosen on other")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_runs_over_rest(scenario):
    port = _free_port()
    ui = _start(["ui", "--port", str(port)], scenario["cwd"])
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        end = time.monotonic() + 90
        while True:
            try:
                q = urllib.parse.urlencode({"experiment_name": "autoprune/s"})
                exp = json.load(urllib.request.urlopen(f"{base}/experiments/get-by-name?{q}", timeout=5))
                break
            except OSError:
                assert ui.poll() is None and time.monotonic() < end
                time.sleep(0.5)
        body = json.dumps({"experiment_ids": [exp["experiment"]["experiment_id"]], "max_results": 1000}).encode()
        req = urllib.request.Request(f"{base}/runs/search", body, {"Content-Type": "application/json"})
        runs = json.load(urllib.request.urlopen(req, timeout=30))["runs"]
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
    kinds = [r["data"]["tags"] for r in runs]
    kinds = [next(t["value"] for t in tags if t["key"] == "autoprune.kind") for tags in kinds]
    assert kinds.count("candidate") == len(_results(scenario["out"] / "journal.jsonl")) and kinds.count("search") == 1


def _one_line_error(args: list[str], capsys, match: str) -> None:
    from autoprune.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1, err


def test_bad_input_is_one_line_and_loses_nothing(scenario, capsys, monkeypatch):
    cwd, journal = scenario["cwd"], scenario["out"] / "journal.jsonl"
    monkeypatch.chdir(cwd)
    kept = journal.read_bytes()
    _one_line_error(["search", *SMALL, "--budget", "5 minutes", "--out", "runs/t"], capsys, "malformed budget")
    _one_line_error(["search", *SMALL, "--budget", "30s", "--out", "runs/s"], capsys, "holds a search already")
    _one_line_error(["search", "--resume", "--out", "runs/s", "--tracking-uri", "http://127.0.0.1:9"], capsys,
                    "unreachable")
    _one_line_error(["search", "--resume", "--out", "runs/s", "--ray-address", "127.0.0.1:9"], capsys, "unreachable")
    _one_line_error(["search", "--resume", "--out", "runs/s", "--sparsity", "0.7"], capsys, "was started with")
    _one_line_error(["search", "--resume", "--out", "runs/s"], capsys, "has finished")
    assert journal.read_bytes() == kept
    assert not (cwd / "runs" / "t").exists()


def test_ray_temp_dir_is_short_enough_for_unix_sockets(tmp_path):
    from autoprune.jobs.cluster import ray_temp_dir

    deep = tmp_path / ("x" * 80) / "run"
    assert ray_temp_dir(deep).startswith("/tmp/autoprune-ray-") and len(ray_temp_dir(deep)) < 40
    assert ray_temp_dir(deep) == ray_temp_dir(deep)  # stable per folder


GP = ["--model", "stories260K", "--sparsity", "0.5", "--strategies", "gp", "--calib-windows", "16",
      "--proxy-windows", "8", "--eval-windows", "16", "--top-k", "2", "--baselines", "none", "--per-forward", "4"]


def test_gp_search_stacks_candidates_and_scores_finalists_sequentially(tmp_path):
    """A GP search sends one-shot candidates four to a job (one forward pass) and its best
    metrics one by one under the sequential protocol; every result equals the same worker's
    result for that candidate alone."""
    from autoprune.jobs.search import CONFIG_FILE, SearchConfig, worker_spec
    from autoprune.search.workers import ProxyWorker

    proc = _start(["search", *GP, "--budget", "45s", "--out", "runs/gp"], tmp_path)
    text, _ = proc.communicate(timeout=200)
    assert proc.returncode == 0, text
    journal = tmp_path / "runs" / "gp" / "journal.jsonl"
    submits, results = _events(journal, "submit"), _results(journal)
    assert submits and all(e["id"] in results for e in submits)
    seq = [e for e in submits if e["sequential"]]
    assert seq and all(results[e["id"]]["error"] is None for e in seq)
    cfg = SearchConfig.from_dict(json.loads((tmp_path / "runs" / "gp" / CONFIG_FILE).read_text()))
    worker = ProxyWorker(worker_spec(cfg))
    one_shot = [e for e in submits if not e["sequential"] and results[e["id"]]["error"] is None]
    for e in one_shot[:6] + seq[:1]:
        alone = worker.evaluate(Policy.from_dict(e["policy"]), e["batches"], e["sequential"])
        assert alone.loss == pytest.approx(results[e["id"]]["loss"], rel=1e-4), e["policy"]["metric"]
        assert alone.masks == results[e["id"]]["masks"]


def test_a_converged_allocation_phase_gives_its_time_back_to_the_metric_search(tmp_path):
    """Under 2:4 evolution only picks the weight update and is done in seconds; the metric search
    then goes on until the allocation phase's deadline instead of leaving the time idle."""
    proc = _start(["search", "--model", "stories260K", "--pattern", "2:4", "--strategies", "gp,evo", "--budget", "90s",
                   "--calib-windows", "16", "--proxy-windows", "8", "--eval-windows", "16", "--top-k", "1",
                   "--baselines", "sparsegpt", "--out", "runs/nm"], tmp_path)
    text, _ = proc.communicate(timeout=200)
    assert proc.returncode == 0, text
    journal = tmp_path / "runs" / "nm" / "journal.jsonl"
    phases = [(e["event"], e["phase"]) for e in _journal(journal) if e["event"] in ("phase_start", "phase_end")]
    assert phases[:6] == [("phase_start", "metric"), ("phase_end", "metric"), ("phase_start", "allocation"),
                          ("phase_end", "allocation"), ("phase_start", "metric"), ("phase_end", "metric")]
    events = _journal(journal)
    back = next(i for i, e in enumerate(events) if (e["event"], e.get("phase")) == ("phase_end", "allocation"))
    assert any(e["event"] == "submit" and e["strategy"] == "gp" for e in events[back:])
