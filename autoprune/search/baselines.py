"""The recipes a search's winner must beat, validated beside it under the same protocol.

A recipe is a published method with an allocation, ``method[+allocation]``: ``sparsegpt+owl``,
``sparsegpt``, ``wanda+owl``, ``wanda`` (the default set, the strongest known recipes, validated
in that order), or with ``+alpha`` (AlphaPruning). OWL's lambda is tuned as an engineer would: every
value of the search's ``owl_lambdas`` is validated on the selection split and the best one
stands for the recipe. An N:M pattern fixes every layer's ratio, so only plain recipes apply.

Every recipe, like every candidate, is pruned by the sequential protocol on the calibration
windows and measured on the selection split; the winner is chosen there among candidates *and*
recipes (a search never hands back less than it knows), and only then are the winner and each
recipe's best variant measured on the evaluation data, which reports and decides nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict

from autoprune.errors import UserError
from autoprune.messages import ValidationResult
from autoprune.pruning.policy import METHODS, Policy

DEFAULT = "sparsegpt+owl,sparsegpt,wanda+owl,wanda"  # validated in this order: the strongest first
OWL_LAMBDAS = (0.05, 0.1, 0.15, 0.2)
ALLOCATIONS = ("uniform", "owl", "alpha")
DENSE = "dense"  # the unpruned model: measured whenever any recipe is


def parse_baselines(text: str) -> list[str]:
    """``"wanda,sparsegpt+owl"`` -> the recipe names; ``"none"`` -> none; a one-line error otherwise."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return []
    bad = []
    for name in names:
        method, _, allocation = name.partition("+")
        if method not in METHODS or (allocation and allocation not in ALLOCATIONS):
            bad.append(name)
    if bad or not names or len(set(names)) != len(names):
        raise UserError(f"baselines {text!r}: give distinct recipes method[+allocation] with method in "
                        f"{', '.join(METHODS)} and allocation in {', '.join(ALLOCATIONS)}, or none")
    return names


def parse_lambdas(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or not all(0 < v < 0.5 for v in values):
        raise UserError(f"owl-lambdas {text!r}: give comma-separated values in (0, 0.5), e.g. 0.05,0.1,0.15")
    return values


def recipe(key: str) -> str:
    """The recipe a validation key belongs to: ``sparsegpt+owl@0.1`` -> ``sparsegpt+owl``."""
    return key.split("@")[0]


def baseline_policies(base: Policy, names: list[str], lambdas: tuple[float, ...] = OWL_LAMBDAS
                      ) -> tuple[dict[str, Policy | None], dict[str, str]]:
    """(validation key -> policy, ``dense`` -> None; recipe -> why it is skipped). An OWL recipe
    has one key per lambda, ``name@lambda``."""
    if not names:
        return {}, {}
    todo: dict[str, Policy | None] = {DENSE: None}
    skipped = {}
    for name in names:
        method, _, allocation = name.partition("+")
        allocation = allocation or "uniform"
        if allocation != "uniform" and base.nm is not None:
            skipped[name] = f"pattern {base.pattern} fixes every layer's ratio"
            continue
        policy = Policy.from_method(method, base.sparsity, base.pattern, allocation)
        if allocation == "owl":
            for lam in lambdas:
                todo[f"{name}@{lam:g}"] = Policy(**{**policy.to_dict(), "owl_lambda": lam})
        else:
            todo[name] = policy
    return todo, skipped


def best_variants(selected: dict[str, ValidationResult]) -> dict[str, str]:
    """Recipe -> its validation key with the lowest selection perplexity (OWL's tuned lambda)."""
    best: dict[str, str] = {}
    for key, res in selected.items():
        if key == DENSE or res.error is not None:
            continue
        name = recipe(key)
        if name not in best or res.perplexity < selected[best[name]].perplexity:
            best[name] = key
    return best


def improvement(baseline_ppl: float | None, winner_ppl: float | None) -> float | None:
    """The winner's relative perplexity improvement over a baseline (positive: the winner is better)."""
    if baseline_ppl is None or winner_ppl is None or not math.isfinite(baseline_ppl) or baseline_ppl <= 0:
        return None
    return (baseline_ppl - winner_ppl) / baseline_ppl


def report(names: list[str], policies: dict[str, Policy | None], skipped: dict[str, str],
           selected: dict[str, ValidationResult], reported: dict[str, ValidationResult],
           winner_ppl: float | None) -> list[dict]:
    """One row per recipe (and the dense model): its best variant's policy, selection and
    evaluation perplexity, and the winner's improvement over it on the evaluation data; or why
    it was not validated."""
    variants = best_variants(selected)
    rows = []
    for name in [DENSE, *names] if names else []:
        if name in skipped:
            rows.append({"name": name, "policy": None, "skipped": skipped[name]})
            continue
        key = DENSE if name == DENSE else variants.get(name)
        policy = policies.get(key) if key is not None else None
        row = {"name": name, "key": key, "policy": policy.to_dict() if policy is not None else None}
        if key is not None and key in reported and reported[key].error is None:
            res = reported[key]
            gain = None if name == DENSE else improvement(res.perplexity, winner_ppl)
            sel = selected[key].perplexity if key in selected else None
            measured = {k: v for k, v in asdict(res).items() if k != "error"}
            rows.append({**row, **measured, "block_ratios": list(res.block_ratios), "select_perplexity": sel,
                         "improvement": gain})
        else:
            failed = (reported.get(key) or selected.get(key)) if key else None
            err = failed.error if failed is not None else None
            rows.append({**row, "skipped": err or "did not fit in the validation time left"})
    return rows


def tracking_metrics(rows: list[dict]) -> dict[str, float | None]:
    """Metrics for the search's MLflow run: baseline_<name>_ppl and improvement_vs_<name>."""
    out: dict[str, float | None] = {}
    for r in rows:
        if "skipped" not in r:
            name = r["name"].replace("+", "_")
            out[f"baseline_{name}_ppl"] = r["perplexity"]
            if r["name"] != DENSE:
                out[f"improvement_vs_{name}"] = r["improvement"]
    return out
