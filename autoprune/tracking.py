"""MLflow tracking: an experiment per search, one search run, and what a person looks at.

The journal holds every candidate; MLflow gets what scales to an 8-hour search:
- the search run's **curves** as step metrics: per strategy the best full-fidelity proxy loss (step:
  that strategy's candidate count) and candidates per second (every ``RATE_EVERY`` journal
  seconds), the same over all strategies;
- **nested runs** for the candidates that matter, with ``--log-candidates top`` (the default): the
  validated ones (the winner tagged), each strategy's best few, and the recipes as runs of their
  own, so the UI charts the winner against them; ``all`` adds a run per candidate, ``none`` keeps
  only the search run;
- ``candidates.csv``, the whole table (expression, allocation, update, losses), as an artifact.

Runs are written by a background thread so the search never waits on the store. Resume logs
nothing twice: nested runs are found by their ``autoprune.candidate`` tag, curve points by their
step.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import queue
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from autoprune.errors import UserError

DEFAULT_URI = "sqlite:///runs/mlflow.db"
EXPERIMENT_PREFIX = "autoprune/"
CANDIDATE_TAG = "autoprune.candidate"
LOG_MODES = ("top", "all", "none")
RATE_EVERY = 30.0  # journal seconds between candidates-per-second points
STRATEGY_BEST = 3  # candidates per strategy logged as runs with --log-candidates top


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
    lock = None
    if parsed.scheme == "sqlite":
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            lock = Path(path + ".lock")
    elif parsed.scheme in ("", "file"):
        Path(parsed.path or uri).mkdir(parents=True, exist_ok=True)
    try:
        # two searches starting at once on a new SQLite store would both create and migrate its
        # tables (and one fail): the first to hold the lock does it, the other then finds it done
        with _exclusive(lock):
            _client(uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any store failure is one line for the user
        raise UserError(f"tracking URI {uri} cannot be used: {str(e).splitlines()[0][:200]}") from None
    return uri


@contextlib.contextmanager
def _exclusive(lock: Path | None):
    if lock is None:
        yield
        return
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_store(uri: str) -> str:
    """``uri`` for a read-only command: a store that exists, else a one-line ``UserError``; creates nothing."""
    parsed = urlparse(uri)
    path = uri[len("sqlite:///"):] if parsed.scheme == "sqlite" else parsed.path or uri
    if parsed.scheme in ("sqlite", "", "file") and not Path(path).exists():
        raise UserError(f"no tracking store at {uri} (looked for {Path(path).resolve()}): run a search from this "
                        "folder first, or pass --tracking-uri")
    if parsed.scheme == "sqlite":
        import sqlite3

        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise UserError(f"{path} is not an MLflow store (not an SQLite database)")
        try:
            sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("SELECT 1 FROM experiments LIMIT 1")
        except sqlite3.Error:
            raise UserError(f"{path} is not an MLflow store (no experiments table)") from None
        return uri  # read directly (see _Reader): no MLflow import for a read-only command
    return check_uri(uri)


def finite_metrics(values: dict) -> list:
    """MLflow metrics of the finite ones of ``values`` (None, "" and NaN left out), stamped now."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, 0) for k, v in values.items() if v not in (None, "") and math.isfinite(float(v))]


def experiment_id(client, uri: str, name: str) -> str:
    """The id of experiment ``name``, made (with its artifact root) when it is new."""
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name, artifact_location=_artifact_root(uri, name))


def create_parent_run(client, experiment: str, experiment_id: str, tags: dict, params: dict) -> str:
    """A new top-level run named after the experiment, with ``params`` (values cut to MLflow's limit)."""
    from mlflow.entities import Param

    run = client.create_run(experiment_id, run_name=experiment.removeprefix(EXPERIMENT_PREFIX), tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id


def close_run(client, run_id: str, artifacts: list[Path], status: str) -> None:
    """The artifacts that exist logged, and the run ended with ``status``."""
    for path in artifacts:
        if Path(path).exists():
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status)


@contextlib.contextmanager
def store_warning(what: str):
    """A store failing inside costs a warning naming ``what``, not the results: everything is in
    the run folder, and the store is a view of it."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - see above
        logging.getLogger("autoprune").warning("MLflow: %s failed (%s)", what, str(e).splitlines()[0][:160])


def short_allocation(p: dict) -> str:
    """A policy's allocation in a few characters: uniform, owl(0.1), alpha(0.3), or explicit
    with the range of its block ratios."""
    if p["allocation"] == "owl":
        return f"owl({p['owl_lambda']:g})"
    if p["allocation"] == "alpha":
        return f"alpha({p['alpha_eps']:g})"
    if p["allocation"] == "explicit":
        r = p["block_ratios"]
        return f"explicit {min(r):.2f}-{max(r):.2f}" + ("+layers" if p.get("layer_ratios") else "")
    return p["allocation"]


def candidate_params(entry: dict) -> dict[str, str]:
    p = entry["policy"]
    return {"expression": p["metric"], "allocation": short_allocation(p), "pattern": p["pattern"],
            "target_sparsity": f"{p['sparsity']:g}", "update": p["update"], "strategy": entry["strategy"],
            "phase": entry["phase"], "policy": json.dumps(p)[:6000]}


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Artifacts of an embedded sqlite store beside its database (runs/mlartifacts), not in ./mlruns."""
    if not uri.startswith("sqlite:///"):
        return None  # a server or other store decides
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent / "mlartifacts" / experiment.replace("/", "_")).resolve().as_uri()


class Tracker:
    """One search's MLflow run. ``log_candidate`` sees every candidate and queues what the mode
    logs (curve points; with ``all``, a nested run); ``log_validation`` and ``finish`` add the runs
    that matter. A background thread writes everything queued."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str | None = None, params: dict | None = None,
                 mode: str = "top"):
        if mode not in LOG_MODES:
            raise UserError(f"unknown --log-candidates {mode!r} (choose {', '.join(LOG_MODES)})")
        self.uri, self.mode = uri, mode
        self.client = _client(uri)
        self.experiment_id = experiment_id(self.client, uri, experiment)
        if parent_run_id is None:
            parent_run_id = create_parent_run(self.client, experiment, self.experiment_id,
                                              {"autoprune.kind": "search", "autoprune.log_candidates": mode},
                                              params or {})
        else:
            self.client.update_run(parent_run_id, status="RUNNING")
        self.parent_run_id = parent_run_id
        self.run_ids: dict[int | str, str] = self._logged()  # candidate id or recipe name -> run id
        self._steps = self._curve_steps()  # curve -> last step in the store (resume logs no point twice)
        self._curves: dict[str, dict] = {}  # strategy (and "all") -> {"n", "best", "t", "n_at_t"}
        self._points: list[tuple[str, float, int]] = []  # curve points not yet written
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._write, daemon=True)
        self._thread.start()

    def _logged(self) -> dict[int | str, str]:
        out, token = {}, None
        while True:
            page = self.client.search_runs([self.experiment_id], f"tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
                                           max_results=50000, page_token=token)
            for r in page:
                key = r.data.tags.get(CANDIDATE_TAG) or r.data.tags.get("autoprune.recipe")
                if key is not None:
                    out[int(key) if key.isdigit() else key] = r.info.run_id
            token = page.token
            if not token:
                return out

    def _curve_steps(self) -> dict[str, int]:
        keys = self.client.get_run(self.parent_run_id).data.metrics
        return {k: max(m.step for m in self.client.get_metric_history(self.parent_run_id, k))
                for k in keys if k.startswith(("best_proxy_loss/", "candidates_per_second/"))}

    def log_candidate(self, entry: dict) -> None:
        """Every candidate, in journal order (``entry``: a submit event merged with its result, see
        ``Journal.results``), this session's and, on resume, the earlier ones again."""
        points = []
        for key in (entry["strategy"], "all"):
            c = self._curves.setdefault(key, {"n": 0, "best": math.inf, "t": entry.get("t", 0.0), "n_at_t": 1})
            c["n"] += 1
            loss = entry["result"]["loss"]
            if entry.get("fidelity", 1.0) >= 1 and not entry.get("sequential") and loss < c["best"]:
                c["best"] = loss
                points.append((f"best_proxy_loss/{key}", loss, c["n"]))
            t = entry.get("t", 0.0)
            if t - c["t"] >= RATE_EVERY:
                points.append((f"candidates_per_second/{key}", (c["n"] - c["n_at_t"]) / (t - c["t"]), c["n"]))
                c["t"], c["n_at_t"] = t, c["n"]
        points = [p for p in points if p[2] > self._steps.get(p[0], -1)]
        if points and self.mode != "none":
            with self._lock:
                signal = not self._points  # the writer takes every point queued so far in one batch
                self._points += points
            if signal:
                self._queue.put(("curve", None))
        if self.mode == "all" and entry["id"] not in self.run_ids:
            self._queue.put(("candidate", (entry, {}, {})))

    def log_validation(self, entry: dict, values: dict, tags: dict | None = None) -> None:
        """Perplexities of a validated candidate: its run, created unless the mode is ``none``."""
        if self.mode != "none":
            self._queue.put(("candidate", (entry, values, {"autoprune.validated": "true", **(tags or {})})))

    def _write(self) -> None:
        while True:
            kind, item = self._queue.get()
            try:
                if kind == "curve":
                    with self._lock:
                        points, self._points = self._points, []
                    for i in range(0, len(points), 1000):  # MLflow's batch limit
                        self._curve(points[i:i + 1000])
                elif kind == "candidate":
                    self._write_candidate(*item)
                elif kind == "recipe":
                    self._write_recipe(item)
            except Exception as e:  # noqa: BLE001 - the journal keeps the record; resume retries
                logging.getLogger("autoprune").warning("MLflow logging failed (%s)", str(e).splitlines()[0][:160])
            finally:
                self._queue.task_done()

    def _curve(self, points: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_run_id, metrics=[Metric(k, float(v), now, step) for k, v, step in points
                                                          if math.isfinite(v)])
        for k, _, step in points:
            self._steps[k] = max(step, self._steps.get(k, -1))

    def _write_candidate(self, entry: dict, values: dict, tags: dict) -> None:
        from mlflow.entities import Param

        run_id = self.run_ids.get(entry["id"])
        if run_id is None:
            res = entry["result"]
            run = self.client.create_run(self.experiment_id, run_name=f"{entry['strategy']}-{entry['id']}", tags={
                "mlflow.parentRunId": self.parent_run_id, CANDIDATE_TAG: str(entry["id"]),
                "autoprune.kind": "candidate", "autoprune.strategy": entry["strategy"],
                "autoprune.protocol": "sequential" if entry.get("sequential") else "one-shot",
                **({"autoprune.error": res["error"][:500]} if res.get("error") else {})})
            run_id = self.run_ids[entry["id"]] = run.info.run_id  # at once: a failure below must not make a second run
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in candidate_params(entry).items()])
            self._metrics(run_id, {"proxy_loss": res["loss"], "fidelity": entry.get("fidelity", 1.0),
                                   "sparsity": res["sparsity"], "seconds": res["seconds"], "tokens": res["tokens"]})
            self.client.set_terminated(run_id, "FINISHED" if res.get("error") is None else "FAILED")
        self._metrics(run_id, values)
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)

    def _write_recipe(self, row: dict) -> None:
        """A recipe validated beside the candidates (``autoprune.search.baselines.report`` row)."""
        from mlflow.entities import Param

        if row["name"] in self.run_ids:
            return
        run = self.client.create_run(self.experiment_id, run_name=f"recipe {row['name']}", tags={
            "mlflow.parentRunId": self.parent_run_id, "autoprune.kind": "recipe", "autoprune.recipe": row["name"],
            "autoprune.validated": "true"})
        policy = row.get("policy")
        if policy:
            self.client.log_batch(run.info.run_id, params=[
                Param("expression", policy["metric"]), Param("allocation", short_allocation(policy)),
                Param("update", policy["update"]), Param("policy", json.dumps(policy)[:6000])])
        self._metrics(run.info.run_id, {"select_perplexity": row.get("select_perplexity"),
                                        "eval_perplexity": row.get("perplexity"), "sparsity": row.get("sparsity")})
        self.client.set_terminated(run.info.run_id, "FINISHED")
        self.run_ids[row["name"]] = run.info.run_id

    def _metrics(self, run_id: str, values: dict) -> None:
        ms = finite_metrics(values)
        if ms:
            self.client.log_batch(run_id, metrics=ms)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the queued writes are done (at most ``timeout`` s); True when all are."""
        end = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.05)
        return True

    def finish(self, metrics: dict, artifacts: list[Path], status: str = "FINISHED", runs: list[dict] = (),
               recipes: list[dict] = (), winner: dict | None = None, validated: list[tuple[dict, dict]] = ()) -> None:
        """Close the search run: ``runs`` (entries of the candidates worth a run: each strategy's
        best), ``validated`` ((entry, perplexities) of every validated candidate: those an earlier
        session did not get to the store are written now), ``recipes`` (validated recipes' report
        rows) as runs, the ``winner`` (a validated entry, or a recipe row) tagged on its run and
        named, linked, on the search run. A store failing here costs a warning, not the results."""
        if self.mode != "none":
            for entry, values in validated:
                if entry["id"] not in self.run_ids:
                    self.log_validation(entry, values)
            for entry in runs:
                if entry["id"] not in self.run_ids:
                    self._queue.put(("candidate", (entry, {}, {})))
            for row in recipes:
                if "skipped" not in row and row["name"] != "dense":
                    self._queue.put(("recipe", row))
        self.flush(timeout=120)
        with store_warning("closing the search run"):
            self._metrics(self.parent_run_id, metrics)
            if winner is not None:
                self._tag_winner(winner, recipes)
            close_run(self.client, self.parent_run_id, artifacts, status)

    def _tag_winner(self, winner: dict, recipes: list[dict]) -> None:
        key = winner.get("id", winner.get("name"))
        label = f"candidate {key}" if isinstance(key, int) else f"recipe {key}"
        run_id = self.run_ids.get(key)
        self.client.set_tag(self.parent_run_id, "autoprune.winner", label)
        lines = [f"**Winner: {label}**" + (f" ([run](#/experiments/{self.experiment_id}/runs/{run_id}))" if run_id else ""),
                 "", "| | selection ppl | eval ppl |", "|---|---|---|",
                 f"| winner | {_num(winner.get('select_perplexity'))} | {_num(winner.get('eval_perplexity', winner.get('perplexity')))} |"]
        lines += [f"| {r['name']} | {_num(r.get('select_perplexity'))} | {_num(r.get('perplexity'))} |"
                  for r in recipes if "skipped" not in r]
        self.client.set_tag(self.parent_run_id, "mlflow.note.content", "\n".join(lines))
        if run_id is not None:
            self.client.set_tag(self.parent_run_id, "autoprune.winner_run_id", run_id)
            self.client.set_tag(run_id, "autoprune.winner", "true")


def _num(v) -> str:
    return "-" if v is None else f"{v:.3f}"


class _Reader:
    """The reads of ``autoprune leaderboard`` and the notebook: experiments, and runs selected by a
    tag, ordered by a metric. Through MLflow's client; for an embedded SQLite store straight
    from its tables (runs, tags, params, latest_metrics), which answers in milliseconds where
    importing MLflow and opening its store take over a second. Runs are dicts {"run_id",
    "experiment_id", "tags", "params", "metrics"}."""

    def __init__(self, uri: str, direct: bool = True):
        self.uri = uri
        self.db = None
        if direct and uri.startswith("sqlite:///"):
            import sqlite3

            self.db = sqlite3.connect(f"file:{uri.removeprefix('sqlite:///')}?mode=ro", uri=True)
        else:
            self.client = _client(uri)

    def experiments(self) -> dict[str, str]:
        if self.db is None:
            return {e.experiment_id: e.name for e in self.client.search_experiments()}
        return {str(i): n for i, n in self.db.execute(
            "SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active'")}

    def runs(self, ids: list[str], tags: dict[str, str], order: str | None = None, limit: int = 1000,
             where_metric: tuple[str, float] | None = None) -> list[dict]:
        """Active runs of experiments ``ids`` with every tag in ``tags``, optionally with a metric
        equal to a value, by ``order`` (a metric, ascending, missing last)."""
        if self.db is None:
            clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
            if where_metric:
                clauses.append(f"metrics.{where_metric[0]} = {where_metric[1]}")
            found = self.client.search_runs(ids, " and ".join(clauses), max_results=limit,
                                            order_by=[f"metrics.{order} ASC"] if order else None)
            return [{"run_id": r.info.run_id, "experiment_id": r.info.experiment_id, "tags": r.data.tags,
                     "params": r.data.params, "metrics": r.data.metrics} for r in found]
        sql = ["SELECT r.run_uuid, r.experiment_id FROM runs r"]
        args: list = []
        for i, (k, v) in enumerate(tags.items()):
            sql.append(f"JOIN tags t{i} ON t{i}.run_uuid = r.run_uuid AND t{i}.key = ? AND t{i}.value = ?")
            args += [k, v]
        if where_metric:
            sql.append("JOIN latest_metrics w ON w.run_uuid = r.run_uuid AND w.key = ? AND w.value = ?")
            args += list(where_metric)
        if order:
            sql.append("LEFT JOIN latest_metrics o ON o.run_uuid = r.run_uuid AND o.key = ?")
            args.append(order)
        sql.append(f"WHERE r.lifecycle_stage = 'active' AND r.experiment_id IN ({', '.join('?' * len(ids))})")
        args += [int(i) for i in ids]
        if order:
            sql.append("ORDER BY o.value IS NULL, o.value")
        sql.append("LIMIT ?")
        rows = self.db.execute(" ".join(sql), [*args, limit]).fetchall()
        return [{"run_id": run, "experiment_id": str(exp), **self._data(run)} for run, exp in rows]

    def _data(self, run: str) -> dict:
        q = "SELECT key, value FROM {} WHERE run_uuid = ?"
        return {"tags": dict(self.db.execute(q.format("tags"), (run,))),
                "params": dict(self.db.execute(q.format("params"), (run,))),
                "metrics": {k: v for k, v in self.db.execute(q.format("latest_metrics") + " AND is_nan = 0", (run,))}}

    def searches(self, experiment: str | None) -> dict[str, str]:
        """Experiment id -> search name, for one experiment (or every autoprune experiment)."""
        exps = self.experiments()
        if experiment is not None:
            found = {i: n for i, n in exps.items() if n in (experiment, EXPERIMENT_PREFIX + experiment)}
            if not found:
                raise UserError(f"no experiment {experiment!r} in {self.uri}")
            return {i: n.removeprefix(EXPERIMENT_PREFIX) for i, n in found.items()}
        return {i: n.removeprefix(EXPERIMENT_PREFIX) for i, n in exps.items() if n.startswith(EXPERIMENT_PREFIX)}


def leaderboard(uri: str, experiment: str | None = None, top: int = 10, direct: bool = True) -> list[dict]:
    """The ranking a search is decided by: the validated candidates and recipes first, by their
    perplexity on the selection split (each search's winner marked), then the other full-fidelity
    candidates by proxy loss; ``top`` rows, over one experiment (or every autoprune experiment).
    ``direct``: an SQLite store is read without MLflow (False: through MLflow's client)."""
    reader = _Reader(uri, direct)
    names = reader.searches(experiment)
    if not names:
        return []
    ids = list(names)
    validated = reader.runs(ids, {"autoprune.validated": "true"}, "select_perplexity", top)
    rest = reader.runs(ids, {"autoprune.kind": "candidate"}, "proxy_loss", top + len(validated), ("fidelity", 1.0))
    seen = {r["run_id"] for r in validated}
    rows = []
    for r in [*validated, *(r for r in rest if r["run_id"] not in seen)][:top]:
        tags, m, params = r["tags"], r["metrics"], r["params"]
        recipe = tags.get("autoprune.recipe")
        rows.append({"search": names[r["experiment_id"]], "candidate": recipe or int(tags[CANDIDATE_TAG]),
                     "strategy": "recipe" if recipe else tags.get("autoprune.strategy", ""),
                     "expression": params.get("expression", ""), "allocation": params.get("allocation", ""),
                     "update": params.get("update", ""), "proxy_loss": m.get("proxy_loss"),
                     "sparsity": m.get("sparsity"), "select_perplexity": m.get("select_perplexity"),
                     "eval_perplexity": m.get("eval_perplexity"), "winner": tags.get("autoprune.winner") == "true",
                     "run_id": r["run_id"]})
    return rows


def baselines(uri: str, experiment: str | None = None) -> list[dict]:
    """Per finished search that validated baselines: {"search", "winner" (its eval perplexity),
    "baselines" (name -> eval perplexity)}, from the search runs' ``baseline_<name>_ppl`` metrics."""
    reader = _Reader(uri)
    names = reader.searches(experiment)
    if not names:
        return []
    out = []
    for r in reader.runs(list(names), {"autoprune.kind": "search"}):
        m = r["metrics"]
        found = {k.removeprefix("baseline_").removesuffix("_ppl"): v for k, v in sorted(m.items())
                 if k.startswith("baseline_") and k.endswith("_ppl")}
        if found:
            out.append({"search": names[r["experiment_id"]], "winner": m.get("best_eval_perplexity"),
                        "baselines": found})
    return out
