"""A structured search in MLflow, beside the pruning searches (``autoprune.tracking``) in the same store."""

from __future__ import annotations

import math
from pathlib import Path

from autoprune.tracking import _client, close_run, create_parent_run, experiment_id, finite_metrics, store_warning

TRIAL_TAG = "autoprune.shrink_trial"


class ShrinkTracker:
    """One structured search (``autoprune shrink --search``) in MLflow: a parent run (kind
    ``shrink-search``) with the config as params, a nested run per trial (kind ``shrink-trial``;
    params: the plan; metrics: measured speed-up, decode tokens/s, proxy perplexity), written as
    each trial ends (a trial takes seconds; a run is milliseconds), and ``finish``: the chosen
    trial tagged, the selection perplexities, the result's metrics and artifacts (the trials' CSV,
    the Pareto plot). Its runs are not ``candidate`` runs: the leaderboard of pruning policies
    does not list them."""

    def __init__(self, uri: str, experiment: str, params: dict, tags: dict[str, str] | None = None):
        self.client = _client(uri)
        self.experiment_id = experiment_id(self.client, uri, experiment)
        self.parent_run_id = create_parent_run(self.client, experiment, self.experiment_id,
                                               {"autoprune.kind": "shrink-search", **(tags or {})}, params)
        self.run_ids: dict[int, str] = {}
        self.best = math.inf

    def log_trial(self, row: dict, strategy: str) -> None:
        """``row``: ``structured.search.Trial.row``."""
        from mlflow.entities import Param

        n = int(row["trial"])
        run = self.client.create_run(self.experiment_id, run_name=f"{strategy}-{n}", tags={
            "mlflow.parentRunId": self.parent_run_id, "autoprune.kind": "shrink-trial", TRIAL_TAG: str(n),
            "autoprune.strategy": strategy, "autoprune.feasible": str(bool(row["feasible"])).lower()})
        self.run_ids[n] = run.info.run_id
        params = {k: str(row[k]) for k in ("plan", "blocks", "kv_groups", "channels", "dropped")}
        metrics = {"speedup": row["speedup"], "tokens_per_s": row["tokens_per_s"], "proxy_ppl": row["proxy_ppl"],
                   "seconds": row["seconds"]}
        self.client.log_batch(run.info.run_id, params=[Param(k, v or "-") for k, v in params.items()],
                              metrics=finite_metrics(metrics))
        self.client.set_terminated(run.info.run_id, "FINISHED")
        if row["feasible"] and row["proxy_ppl"] not in ("", None):  # the curve of the best feasible trial so far
            self.best = min(self.best, float(row["proxy_ppl"]))
            self.client.log_metric(self.parent_run_id, "best_feasible_proxy_ppl", self.best, step=n)

    def finish(self, chosen: int | None, selection: dict[int, float], metrics: dict, artifacts: list[Path],
               status: str = "FINISHED") -> None:
        """``chosen``: the chosen trial's number; ``selection``: trial number -> selection perplexity
        of the finalists (logged on their runs)."""
        with store_warning("closing the shrink search run"):
            for n, ppl in selection.items():
                if n in self.run_ids:
                    self.client.log_metric(self.run_ids[n], "select_ppl", float(ppl))
                    self.client.set_tag(self.run_ids[n], "autoprune.finalist", "true")
            if chosen is not None and chosen in self.run_ids:
                self.client.set_tag(self.run_ids[chosen], "autoprune.chosen", "true")
                self.client.set_tag(self.parent_run_id, "autoprune.chosen_trial", str(chosen))
                self.client.set_tag(self.parent_run_id, "autoprune.chosen_run_id", self.run_ids[chosen])
            ms = finite_metrics(metrics)
            if ms:
                self.client.log_batch(self.parent_run_id, metrics=ms)
            close_run(self.client, self.parent_run_id, artifacts, status)
