"""MLflow tracking: an experiment per search, a parent run, a nested run per candidate.

The store is chosen by URI (embedded default ``sqlite:///runs/mlflow.db``; any MLflow URI).
Candidate runs are written by a background thread so the search never waits on the store;
the search's journal stays the source of truth and on resume the candidates the store is
missing are logged again (by their ``autoprune.candidate`` tag).
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from autoprune.errors import UserError

DEFAULT_URI = "sqlite:///runs/mlflow.db"
EXPERIMENT_PREFIX = "autoprune/"
CANDIDATE_TAG = "autoprune.candidate"


def _client(uri: str):
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def check_uri(uri: str) -> str:
    """A one-line ``UserError`` unless the store at ``uri`` can be used; local folders are created."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=3).close()
        except OSError as e:
            raise UserError(f"tracking URI {uri} is unreachable ({e.strerror or e})") from None
    elif parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    elif parsed.scheme in ("", "file"):
        Path(parsed.path or uri).mkdir(parents=True, exist_ok=True)
    try:
        _client(uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any store failure is one line for the user
        raise UserError(f"tracking URI {uri} cannot be used: {str(e).splitlines()[0][:200]}") from None
    return uri


def candidate_params(entry: dict) -> dict[str, str]:
    p = entry["policy"]
    ratios = p.get("block_ratios")
    allocation = p["allocation"] if ratios is None else "explicit:" + ",".join(f"{r:.3f}" for r in ratios)
    if p["allocation"] == "owl":
        allocation = f"owl(lambda={p['owl_lambda']:g},M={p['owl_m']:g})"
    return {"expression": p["metric"], "allocation": allocation, "pattern": p["pattern"],
            "target_sparsity": f"{p['sparsity']:g}", "update": p["update"], "strategy": entry["strategy"],
            "phase": entry["phase"], "policy": json.dumps(p)[:6000]}


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts of an embedded sqlite store beside its database (runs/mlartifacts), not in ./mlruns."""
    if not uri.startswith("sqlite:///"):
        return None  # a server or other store decides
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent / "mlartifacts" / experiment.replace("/", "_")).resolve().as_uri()


class Tracker:
    """One search's parent run; ``log_candidate`` queues a nested run for the writer thread."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str | None = None, params: dict | None = None):
        from mlflow.entities import Param

        self.uri = uri
        self.client = _client(uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            experiment, artifact_location=_artifact_root(uri, experiment))
        if parent_run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=experiment.removeprefix(EXPERIMENT_PREFIX),
                                         tags={"autoprune.kind": "search"})
            parent_run_id = run.info.run_id
            self.client.log_batch(parent_run_id, params=[Param(k, str(v)[:6000]) for k, v in (params or {}).items()])
        else:
            self.client.update_run(parent_run_id, status="RUNNING")
        self.parent_run_id = parent_run_id
        self.run_ids: dict[int, str] = self._logged()
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()

    def _logged(self) -> dict[int, str]:
        runs = self.client.search_runs([self.experiment_id],
                                       f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'", max_results=50000)
        return {int(r.data.tags[CANDIDATE_TAG]): r.info.run_id for r in runs if CANDIDATE_TAG in r.data.tags}

    def log_candidate(self, entry: dict) -> None:
        """``entry``: a journal submit event merged with its result (see ``Journal.results``)."""
        if entry["id"] not in self.run_ids:
            self._queue.put(("candidate", entry))

    def log_validation(self, cid: int, values: dict) -> None:
        self._queue.put(("validation", (cid, values)))

    def _write(self) -> None:
        while True:
            kind, item = self._queue.get()
            try:
                if kind == "candidate":
                    self._write_candidate(item)
                elif kind == "validation" and item[0] in self.run_ids:
                    self._metrics(self.run_ids[item[0]], item[1])
            except Exception as e:  # noqa: BLE001 - the journal keeps the record; resume retries
                print(f"autoprune: warning: MLflow logging failed ({str(e).splitlines()[0][:160]})")
            finally:
                self._queue.task_done()

    def _write_candidate(self, entry: dict) -> None:
        from mlflow.entities import Param

        res = entry["result"]
        run = self.client.create_run(self.experiment_id, run_name=f"{entry['strategy']}-{entry['id']}", tags={
            "mlflow.parentRunId": self.parent_run_id, CANDIDATE_TAG: str(entry["id"]),
            "autoprune.kind": "candidate", "autoprune.strategy": entry["strategy"],
            "autoprune.protocol": "sequential" if entry.get("sequential") else "one-shot",
            **({"autoprune.error": res["error"][:500]} if res.get("error") else {})})
        metrics = {"proxy_loss": res["loss"], "fidelity": entry.get("fidelity", 1.0), "sparsity": res["sparsity"],
                   "seconds": res["seconds"], "tokens": res["tokens"]}
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in candidate_params(entry).items()])
        self._metrics(run.info.run_id, metrics)
        self.client.set_terminated(run.info.run_id, "FINISHED" if res.get("error") is None else "FAILED")
        self.run_ids[entry["id"]] = run.info.run_id

    def _metrics(self, run_id: str, values: dict) -> None:
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        ms = [Metric(k, float(v), now, 0) for k, v in values.items() if v is not None and math.isfinite(float(v))]
        if ms:
            self.client.log_batch(run_id, metrics=ms)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the queued runs are written (at most ``timeout`` s); True when all are."""
        import time

        end = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.05)
        return True

    def finish(self, metrics: dict, artifacts: list[Path], status: str = "FINISHED") -> None:
        self.flush(timeout=60)
        self._metrics(self.parent_run_id, metrics)
        for path in artifacts:
            if Path(path).exists():
                self.client.log_artifact(self.parent_run_id, str(path))
        self.client.set_terminated(self.parent_run_id, status)


def _searches(client, uri: str, experiment: str | None) -> dict[str, str]:
    """Experiment id -> search name, for one experiment (or every autoprune experiment)."""
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment) or client.get_experiment_by_name(EXPERIMENT_PREFIX + experiment)
        if exp is None:
            raise UserError(f"no experiment {experiment!r} in {uri}")
        exps = [exp]
    else:
        exps = [e for e in client.search_experiments() if e.name.startswith(EXPERIMENT_PREFIX)]
    return {e.experiment_id: e.name.removeprefix(EXPERIMENT_PREFIX) for e in exps}


def leaderboard(uri: str, experiment: str | None = None, top: int = 10) -> list[dict]:
    """The ``top`` candidates by proxy loss over one experiment (or every autoprune experiment)."""
    client = _client(uri)
    names = _searches(client, uri, experiment)
    if not names:
        return []
    runs = client.search_runs(list(names), "tags.`autoprune.kind` = 'candidate' and metrics.fidelity = 1",
                              order_by=["metrics.proxy_loss ASC"], max_results=top)
    return [{"search": names[r.info.experiment_id], "candidate": int(r.data.tags[CANDIDATE_TAG]),
             "strategy": r.data.tags.get("autoprune.strategy", ""), "expression": r.data.params.get("expression", ""),
             "allocation": r.data.params.get("allocation", ""), "proxy_loss": r.data.metrics.get("proxy_loss"),
             "sparsity": r.data.metrics.get("sparsity"), "eval_perplexity": r.data.metrics.get("eval_perplexity"),
             "run_id": r.info.run_id} for r in runs]


def baselines(uri: str, experiment: str | None = None) -> list[dict]:
    """Per finished search that validated baselines: {"search", "winner" (its eval perplexity),
    "baselines" (name -> eval perplexity)}, from the search runs' ``baseline_<name>_ppl`` metrics."""
    client = _client(uri)
    names = _searches(client, uri, experiment)
    if not names:
        return []
    out = []
    for r in client.search_runs(list(names), "tags.`autoprune.kind` = 'search'", max_results=1000):
        m = r.data.metrics
        found = {k.removeprefix("baseline_").removesuffix("_ppl"): v for k, v in sorted(m.items())
                 if k.startswith("baseline_") and k.endswith("_ppl")}
        if found:
            out.append({"search": names[r.info.experiment_id], "winner": m.get("best_eval_perplexity"),
                        "baselines": found})
    return out
