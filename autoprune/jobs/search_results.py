"""What a finished search leaves in its run folder: the best policy and its exports, plots,
candidates.csv and summary.json; and the rows tracking reads (the winner, each strategy's best)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from autoprune.jobs.run_folder import BEST_FILE, CANDIDATES_FILE, SUMMARY_FILE
from autoprune.pruning.policy import Policy

if TYPE_CHECKING:
    from autoprune.jobs.search import SearchConfig


def strategy_bests(entries: list[dict], k: int | None = None) -> list[dict]:
    """Each strategy's ``k`` best full-fidelity one-shot candidates (default ``tracking.STRATEGY_BEST``)."""
    from autoprune.tracking import STRATEGY_BEST

    by: dict[str, list[dict]] = {}
    for e in entries:
        if e.get("fidelity", 1.0) >= 1 and not e.get("sequential") and math.isfinite(e["result"]["loss"]):
            by.setdefault(e["strategy"], []).append(e)
    return [e for es in by.values() for e in sorted(es, key=lambda e: e["result"]["loss"])[:k or STRATEGY_BEST]]


def winner_row(outcome) -> dict | None:
    """The winner as tracking names it: a validated candidate's id and perplexities, or a recipe's row."""
    if outcome.recipe is not None:
        return next((r for r in outcome.baselines if r["name"] == outcome.recipe), None)
    if outcome.best_id is None or outcome.select_perplexity is None:
        return None
    return {"id": outcome.best_id, "select_perplexity": outcome.select_perplexity,
            "eval_perplexity": outcome.perplexity}


def phase_seconds(events: list) -> dict[str, float]:
    """Seconds per phase from the journal's events (all sessions): start-up, the search phases,
    validation, and finishing (results, the saved model)."""
    from autoprune.search.events import Done, PhaseEnded, PhaseStarted

    out: dict[str, float] = {}
    last_t, last = 0.0, "start-up"
    for e in events:
        if isinstance(e, (PhaseStarted, Done)):
            out[last] = out.get(last, 0.0) + e.t - last_t
            last_t, last = e.t, e.phase if isinstance(e, PhaseStarted) else "finishing"
        elif isinstance(e, PhaseEnded):
            out[last] = out.get(last, 0.0) + e.t - last_t
            last_t, last = e.t, "between phases"
    return {k: round(v, 1) for k, v in out.items()}


def write_results(cfg: SearchConfig, pool, outcome, entries: list[dict], counts: dict[str, int]) -> list[Path]:
    """best_policy.json, the winner's exports, plots, candidates.csv and summary.json in the run
    folder (``entries``: every candidate; ``counts``: candidates per strategy); their paths."""
    from autoprune.search.journal import write_json_atomic
    from autoprune.search.plots import plot_layer_ratios, plot_progress
    from autoprune.search.spec import SPEC_FILE

    out = cfg.out
    files: list[Path] = []
    meta = {"search": str(out), "candidate": outcome.best_id, "proxy_loss": outcome.proxy_loss,
            "select_perplexity": outcome.select_perplexity, "select": cfg.select,
            "eval_perplexity": outcome.perplexity, "eval": cfg.eval}
    if outcome.recipe is not None:
        meta["note"] = f"the recipe {outcome.recipe} beat every candidate on the selection split: it is returned"
    elif outcome.best_id is None:
        meta["note"] = "no candidate finished within the budget: the target with the default metric"
    best = replace(outcome.best, meta=meta)
    best.save(out / BEST_FILE)
    files.append(out / BEST_FILE)
    files += export_metric(best, out / "winner")
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    if entries:
        files.append(plot_progress(entries, plots / "search_progress.png", outcome.best_id))
    ratios = [(f"#{v['id']} select ppl {v['select_perplexity']:.2f}", v["block_ratios"]) for v in outcome.validated]
    recipes = [(r["name"], r["block_ratios"]) for r in outcome.baselines if r.get("block_ratios")]
    if ratios or recipes:
        winner = next((label for (label, _), v in zip(ratios, outcome.validated) if v["id"] == outcome.best_id),
                      outcome.recipe)
        files.append(plot_layer_ratios(ratios, plots / "layer_ratios.png", winner, recipes))
    files.append(write_candidates(entries, outcome, out / CANDIDATES_FILE))
    write_json_atomic(out / SUMMARY_FILE, {
        "config": cfg.to_dict(), "winner": winner_row(outcome), "ranking": ranking(outcome),
        "best_policy": outcome.best.to_dict(),
        "best_candidate": outcome.best_id, "best_proxy_loss": outcome.proxy_loss,
        "best_select_perplexity": outcome.select_perplexity, "best_eval_perplexity": outcome.perplexity,
        "recipe_returned": outcome.recipe, "validated": outcome.validated,
        "baselines": outcome.baselines, "candidates": counts,
        "pool": {"retried": pool.retried, "replaced": pool.replaced}})
    files.append(out / SUMMARY_FILE)
    files.append(out / SPEC_FILE)  # the spaces this search ran with
    return files


def ranking(outcome) -> list[dict]:
    """Validated candidates and recipes by selection perplexity (how the winner was chosen), the
    winner first."""
    rows = [{"candidate": v["id"], "select_perplexity": v["select_perplexity"],
             "eval_perplexity": v["eval_perplexity"], "proxy_loss": v["proxy_loss"]} for v in outcome.validated]
    rows += [{"recipe": r["name"], "select_perplexity": r.get("select_perplexity"),
              "eval_perplexity": r["perplexity"]} for r in outcome.baselines
             if "skipped" not in r and r["name"] != "dense"]
    return sorted(rows, key=lambda r: (r["select_perplexity"] is None, r["select_perplexity"] or 0.0))


def write_candidates(entries: list[dict], outcome, path: Path) -> Path:
    """Every candidate as one CSV row (the journal's content, flat): what it was, what it scored."""
    import csv

    from autoprune.tracking import short_allocation

    validated = {v["id"]: v for v in outcome.validated}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "strategy", "phase", "protocol", "fidelity", "metric", "allocation", "update", "pattern",
                    "sparsity", "proxy_loss", "seconds", "select_perplexity", "eval_perplexity", "winner", "error"])
        for e in entries:
            p, r, v = e["policy"], e["result"], validated.get(e["id"], {})
            w.writerow([e["id"], e["strategy"], e["phase"], "sequential" if e.get("sequential") else "one-shot",
                        f"{e.get('fidelity', 1.0):.3g}", p["metric"], short_allocation(p), p["update"], p["pattern"],
                        f"{r['sparsity']:.5f}", f"{r['loss']:.6g}", f"{r['seconds']:.3f}",
                        v.get("select_perplexity", ""), v.get("eval_perplexity") or "",
                        "yes" if e["id"] == outcome.best_id and outcome.recipe is None else "", r.get("error") or ""])
    return path


def export_metric(policy: Policy, stem: Path) -> list[Path]:
    """The best policy in every format of ``autoprune.export`` (json, python, latex), each with the
    whole policy; none for the OBS solver's ``sparsegpt``, which is not a score (best_policy.json
    holds it)."""
    from autoprune.export import FORMATS, export_metric as render, load_metric

    if policy.metric == "sparsegpt":
        return []
    expr = load_metric(policy.metric)
    suffix = {"json": ".json", "python": ".py", "latex": ".tex"}
    paths = []
    for fmt in FORMATS:
        path = stem.with_suffix(suffix.get(fmt, "." + fmt))
        path.write_text(render(expr, fmt, {"metric": policy.metric}, policy))
        paths.append(path)
    return paths
