"""Baselines validated beside the search's winner, under the same full protocol: the dense model
and published allocations (uniform, OWL, AlphaPruning) of the search's base metric at its target.

Their perplexities sit next to the winner's in the summary, the printed result and the search's
MLflow run, with the winner's relative improvement  (ppl_baseline - ppl_winner) / ppl_baseline.
"""

from __future__ import annotations

import math
from dataclasses import replace

from autoprune.errors import UserError
from autoprune.pruning.policy import Policy

DEFAULT = "uniform,owl,alpha"
DENSE = "dense"  # the unpruned model: measured whenever any baseline is


def parse_baselines(text: str) -> list[str]:
    """``"uniform,owl"`` -> the names; ``"none"`` -> none; a one-line error for anything else."""
    from autoprune.pruning.policy import ALLOCATIONS

    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return []
    known = [a for a in ALLOCATIONS if a != "explicit"]
    unknown = [n for n in names if n not in known]
    if unknown or not names or len(set(names)) != len(names):
        raise UserError(f"baselines {text!r}: choose distinct names from {', '.join(known)}, or none")
    return names


def baseline_policies(base: Policy, names: list[str]) -> tuple[dict[str, Policy | None], dict[str, str]]:
    """(name -> policy to validate, ``dense`` -> None; name -> why it is skipped). An N:M pattern
    fixes every layer's ratio, so only ``uniform`` applies there."""
    if not names:
        return {}, {}
    todo: dict[str, Policy | None] = {DENSE: None}
    skipped = {}
    for name in names:
        if name != "uniform" and base.nm is not None:
            skipped[name] = f"pattern {base.pattern} fixes every layer's ratio"
        else:
            todo[name] = replace(base, allocation=name, block_ratios=None, layer_ratios=None, meta={})
    return todo, skipped


def improvement(baseline_ppl: float | None, winner_ppl: float | None) -> float | None:
    """The winner's relative perplexity improvement over a baseline (positive: the winner is better)."""
    if baseline_ppl is None or winner_ppl is None or not math.isfinite(baseline_ppl) or baseline_ppl <= 0:
        return None
    return (baseline_ppl - winner_ppl) / baseline_ppl


def report(policies: dict[str, Policy | None], skipped: dict[str, str], results: dict[str, dict],
           winner_ppl: float | None) -> list[dict]:
    """One row per baseline (``baseline_policies``' order): its policy, its validation result and the
    winner's improvement over it, or why it was not validated."""
    rows = []
    for name in [*policies, *skipped]:
        policy = policies.get(name)
        row = {"name": name, "policy": policy.to_dict() if policy is not None else None}
        if name in results and "error" not in results[name]:
            res = results[name]
            gain = None if name == DENSE else improvement(res["perplexity"], winner_ppl)
            rows.append({**row, **res, "improvement": gain})
        else:
            why = skipped.get(name) or (results[name]["error"] if name in results
                                        else "did not fit in the validation time left")
            rows.append({**row, "skipped": why})
    return rows


def tracking_metrics(rows: list[dict]) -> dict[str, float | None]:
    """Metrics for the search's MLflow run: baseline_<name>_ppl and improvement_vs_<name>."""
    out: dict[str, float | None] = {}
    for r in rows:
        if "skipped" not in r:
            out[f"baseline_{r['name']}_ppl"] = r["perplexity"]
            if r["name"] != DENSE:
                out[f"improvement_vs_{r['name']}"] = r["improvement"]
    return out
