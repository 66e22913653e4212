"""Does tracking keep up with an 8-hour search? A simulated 250,000-candidate search through the
real ``Tracker`` on a real MLflow store (embedded SQLite, as by default), then what a user does.

    python benchmarks/tracking_scale.py --candidates 250000 [--mode top] [--hours 8]

Candidates are realistic journal entries (GP expressions, explicit 30-block allocations, updates)
arriving as an ``--hours`` search would produce them. Printed: the store's size; the time the
search thread spends handing candidates to the tracker against the search's own rate; how long
the writer thread takes to drain; and the time of ``autoprune leaderboard`` (a process, start-up
included), of the notebook's queries (the search runs, the ranking, ``candidates.csv``), and of the
MLflow UI's run list sorted by proxy loss (the REST call its table makes, on ``autoprune ui``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autoprune.jobs.search_results import strategy_bests, write_candidates  # noqa: E402
from autoprune.pruning.policy import Policy  # noqa: E402
from autoprune.search.validator import Outcome  # noqa: E402
from autoprune.tracking import Tracker, check_uri, leaderboard  # noqa: E402

METRICS = ["mul(abs(W), X)", "div(sqr(W), sqr(Hi))", "mul(add(abs(W), X), sqrt(G))", "sub(abs(W), mms(G))",
           "mul(sqr(W), zscore(X))", "add(mul(abs(W), X), mul(0.5, G))"]


def entries(n: int, hours: float, seed: int = 0):
    rng = random.Random(seed)
    for i in range(1, n + 1):
        strategy = ("gp", "evo", "bo")[i % 3]
        if strategy == "gp":
            policy = Policy(metric=rng.choice(METRICS), sparsity=0.7)
        else:
            r = [min(0.9, max(0.4, 0.7 + rng.uniform(-0.15, 0.15))) for _ in range(30)]
            policy = Policy(metric="mul(abs(W), X)", sparsity=0.7, allocation="explicit", block_ratios=tuple(r),
                            update=rng.choice(("none", "sparsegpt", "admm")))
        batches = rng.choice((1, 4, None))
        yield {"id": i, "phase": "metric" if strategy == "gp" else "allocation", "strategy": strategy,
               "policy": policy.to_dict(), "batches": batches, "sequential": False, "tag": {},
               "t": i / n * hours * 3600, "fidelity": 1.0 if batches is None else batches / 8,
               "result": {"loss": 1.0 + 5.0 / (1 + i / 1000) + rng.random(), "sparsity": 0.7, "seconds": 0.2,
                          "tokens": 4096, "error": None}}


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=250_000)
    ap.add_argument("--hours", type=float, default=8.0)
    ap.add_argument("--mode", default="top", choices=("top", "all", "none"))
    args = ap.parse_args()
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    root = Path(tempfile.mkdtemp(prefix="tracking-scale-"))
    os.chdir(root)
    uri = check_uri("sqlite:///runs/mlflow.db")
    tracker = Tracker(uri, "autoprune/scale", params={"model": "simulated"}, mode=args.mode)
    all_entries = list(entries(args.candidates, args.hours))
    _, handing = timed(lambda: [tracker.log_candidate(e) for e in all_entries])
    _, drain = timed(lambda: tracker.flush())
    ranked = sorted((e for e in all_entries if e["fidelity"] == 1.0), key=lambda e: e["result"]["loss"])
    validated = [{"id": e["id"], "select_perplexity": 20 + k * 0.1, "eval_perplexity": 21 + k * 0.1,
                  "proxy_loss": e["result"]["loss"]} for k, e in enumerate(ranked[:40])]
    for e, v in zip(ranked, validated):
        tracker.log_validation(e, {"select_perplexity": v["select_perplexity"], "eval_perplexity": v["eval_perplexity"]})
    recipes = [{"name": name, "policy": Policy(sparsity=0.7).to_dict(), "select_perplexity": 25.0 + k,
                "perplexity": 26.0 + k, "sparsity": 0.7} for k, name in enumerate(("sparsegpt+owl", "sparsegpt", "wanda"))]
    outcome = Outcome(Policy(), validated[0]["id"], validated[0]["proxy_loss"], 21.0, validated, recipes, 20.0)
    table, csv_s = timed(lambda: write_candidates(all_entries, outcome, root / "candidates.csv"))
    _, finish = timed(lambda: tracker.finish({"best_proxy_loss": validated[0]["proxy_loss"]}, [table],
                                             runs=strategy_bests(all_entries), recipes=recipes,
                                             winner={"id": validated[0]["id"], "select_perplexity": 20.0,
                                                     "eval_perplexity": 21.0}))
    size = sum(p.stat().st_size for p in (root / "runs").rglob("*") if p.is_file())
    cli = [os.path.join(os.path.dirname(sys.executable), "autoprune"), "leaderboard"]
    _, board = timed(lambda: subprocess.run(cli, capture_output=True, check=True))
    _, board_fn = timed(lambda: leaderboard(uri, None, 10))

    def notebook_queries():
        import pandas as pd
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        exps = [e.experiment_id for e in client.search_experiments() if e.name.startswith("autoprune/")]
        searches = client.search_runs(exps, "tags.`autoprune.kind` = 'search'")
        leaderboard(uri, None, 15)
        return len(pd.read_csv(client.download_artifacts(searches[0].info.run_id, "candidates.csv"), low_memory=False))

    rows, nb = timed(notebook_queries)
    ui_s = ui_sorted_list(uri)
    rate = args.candidates / (args.hours * 3600)
    print(f"simulated search: {args.candidates} candidates over {args.hours:g} h ({rate:.1f}/s), --log-candidates {args.mode}")
    print(f"{'measure':52} value")
    for name, value in [
        ("MLflow store size (database + artifacts)", f"{size / 1e6:.1f} MB"),
        ("nested runs in the store", f"{len(tracker.run_ids)}"),
        ("search thread: handing all candidates to the tracker", f"{handing:.2f} s ({args.candidates / handing:,.0f}/s)"),
        ("writer thread: draining what was queued", f"{drain:.2f} s"),
        ("candidates.csv written (rows)", f"{csv_s:.2f} s ({rows} rows)"),
        ("finish (runs that matter, recipes, winner, artifact)", f"{finish:.2f} s"),
        ("autoprune leaderboard (process, start-up included)", f"{board:.2f} s"),
        ("leaderboard query alone", f"{board_fn:.2f} s"),
        ("notebook's queries (searches, ranking, candidates.csv)", f"{nb:.2f} s"),
        ("MLflow UI run list sorted by proxy loss (REST)", f"{ui_s:.2f} s"),
    ]:
        print(f"{name:52} {value}")
    shutil.rmtree(root, ignore_errors=True)


def ui_sorted_list(uri: str) -> float:
    """Seconds of the UI's runs/search call (first page, sorted by proxy loss) on ``autoprune ui``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "autoprune"), "ui", "--port", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow"
    try:
        for _ in range(120):
            try:
                exps = json.load(urllib.request.urlopen(f"{base}/experiments/search?max_results=10", timeout=5))
                break
            except OSError:
                time.sleep(0.5)
        ids = [e["experiment_id"] for e in exps["experiments"] if e["name"].startswith("autoprune/")]
        body = json.dumps({"experiment_ids": ids, "max_results": 100, "order_by": ["metrics.`proxy_loss` ASC"],
                           "run_view_type": "ACTIVE_ONLY"}).encode()
        req = urllib.request.Request(f"{base}/runs/search", body, {"Content-Type": "application/json"})
        _, seconds = timed(lambda: json.load(urllib.request.urlopen(req, timeout=120)))
        return seconds
    finally:
        os.killpg(ui.pid, 15)
        ui.wait(timeout=30)


if __name__ == "__main__":
    main()
