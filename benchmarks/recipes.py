"""The recipes under a finished search's exact protocol, outside its budget.

A search validates the recipes it must beat while its budget allows; on a slow machine some do
not fit. This script reads a search's stored config and measures any recipes the same way: the
same worker set-up (model, calibration, selection and evaluation windows, seeds), each variant
pruned by the sequential protocol and measured on the selection split, OWL's lambda chosen there,
and each recipe's chosen variant measured on the evaluation data.

    python benchmarks/recipes.py runs/bench/smol-0.5/<search folder> --recipes wanda,wanda+owl
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("search", type=Path, help="a search's run folder (holds search_config.json)")
    ap.add_argument("--recipes", default="wanda,wanda+owl", help="recipes, as autoprune search --baselines")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from autoprune.commands import quiet_libraries
    from autoprune.jobs.search import CONFIG_FILE, SearchConfig, worker_spec
    from autoprune.pruning.policy import Policy
    from autoprune.search.baselines import baseline_policies, best_variants, parse_baselines, parse_lambdas
    from autoprune.search.workers import ProxyWorker

    quiet_libraries()
    cfg = SearchConfig.from_dict(json.loads((args.search / CONFIG_FILE).read_text()))
    worker = ProxyWorker(replace(worker_spec(cfg), gradients=False))
    if worker.error:
        raise SystemExit(worker.error)
    base = Policy(sparsity=cfg.sparsity, pattern=cfg.pattern)
    policies, skipped = baseline_policies(base, parse_baselines(args.recipes), parse_lambdas(cfg.owl_lambdas))
    selected = {}
    for key, policy in policies.items():
        if policy is None:
            continue
        t0 = time.perf_counter()
        selected[key] = worker.validate(policy, split="select")
        print(f"{key:<24} selection ppl {selected[key].perplexity:9.3f}   ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    print(f"\nrecipes under the protocol of {args.search} ({cfg.model}, {cfg.sparsity:g} {cfg.pattern}; "
          f"select {cfg.select}, eval {cfg.eval}):")
    for name, key in best_variants(selected).items():
        res = worker.validate(policies[key], split="eval")
        print(f"{name:<16} {key:<24} selection {selected[key].perplexity:9.3f}   eval {res.perplexity:9.3f}",
              flush=True)
    for name, why in skipped.items():
        print(f"{name:<16} skipped: {why}")


if __name__ == "__main__":
    main()
