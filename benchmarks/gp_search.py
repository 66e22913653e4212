"""GP metric search on stories260K within a time budget, then the full-protocol comparison table.

    python benchmarks/gp_search.py --pattern unstructured --budget-min 20
    python benchmarks/gp_search.py --pattern 2:4 --budget-min 20 [--seeds wanda,ria,pruner-zero]

Search selects on calibration data only (proxy windows from tinystories:0-499); the hall of
fame's best metrics and the baselines are then pruned with the full sequential protocol (64 x 256
calibration tokens, seed 0) and evaluated on every 256-token window of tinystories:500-999.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gp_common import full_protocol, setup  # noqa: E402

from autoprune.export import to_json, to_latex  # noqa: E402
from autoprune.pruning.expression import parse  # noqa: E402
from autoprune.pruning.policy import Policy  # noqa: E402
from autoprune.search.base import SearchContext  # noqa: E402
from autoprune.search.gp import GPStrategy  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pattern", default="unstructured")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--budget-min", type=float, default=20.0)
    ap.add_argument("--seeds", default="", help="comma-separated seed individuals (default: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--space", type=Path, default=Path("search_spaces/gp.yaml"))
    ap.add_argument("--top", type=int, default=3, help="hall-of-fame metrics validated with the full protocol")
    ap.add_argument("--out", type=Path, default=Path("runs/gp_search"))
    args = ap.parse_args()

    t_setup = time.perf_counter()
    s = setup()
    ev = s.evaluator
    base = Policy(metric="wanda", sparsity=args.sparsity, pattern=args.pattern)
    space = yaml.safe_load(args.space.read_text())
    space.update(generations=100000, seeds=[x for x in args.seeds.split(",") if x])
    ctx = SearchContext(base, (), ev.max_batches, args.seed, args.out)
    gp = GPStrategy(ctx, space)
    low = gp.space.low_batches
    wanda_low = ev.evaluate(base, low).loss
    wanda_high = ev.evaluate(base).loss
    print(f"setup {time.perf_counter() - t_setup:.1f}s; wanda proxy loss low {wanda_low:.4f} high {wanda_high:.4f}")

    t0 = time.perf_counter()
    budget = args.budget_min * 60
    reached: dict[str, tuple[int, float]] = {}
    bar = tqdm(total=int(budget), desc="gp search (s)", unit="s")
    while time.perf_counter() - t0 < budget and not gp.done():
        cands = gp.ask(8)
        for cand in cands:
            res = ev.evaluate(cand.policy, cand.batches)
            gp.tell(cand, res)
            fid = cand.tag["fidelity"]
            if fid not in reached and res.ok and res.loss <= (wanda_low if fid == "low" else wanda_high):
                reached[fid] = (gp.counts["proposed"], (time.perf_counter() - t0) / 60)
        bar.n = int(time.perf_counter() - t0)
        bar.set_postfix(gen=gp.generation, proposed=gp.counts["proposed"], evaluated=gp.counts["evaluated"])
        bar.refresh()
    bar.close()
    minutes = (time.perf_counter() - t0) / 60
    c = gp.counts
    print(f"search: {minutes:.1f} min, {gp.generation} generations, {c['proposed']} candidates proposed, "
          f"{c['evaluated']} proxy evaluations ({c['mask_hits']} answered by the mask cache), "
          f"{c['cache_hits']} rank-key cache hits, {c['degenerate']} degenerate")
    for fid in ("low", "high"):
        if fid in reached:
            print(f"first metric at least as good as Wanda on the {fid}-fidelity proxy: "
                  f"candidate {reached[fid][0]}, {reached[fid][1]:.2f} min")
        else:
            print(f"no metric reached Wanda on the {fid}-fidelity proxy")

    hof = gp.hall_of_fame()[: args.top]
    rows = [(name, Policy(metric=name, sparsity=args.sparsity, pattern=args.pattern), None)
            for name in ("magnitude", "wanda", "ria")]
    rows += [(f"gp #{i + 1}", replace(base, metric=key), (lo, hi)) for i, (key, hi, lo) in enumerate(hof)]
    table = Table(title=f"stories260K {args.pattern} {args.sparsity:.0%}: perplexity on tinystories:500-999 "
                        f"(full sequential protocol; dense 5.52)")
    for col in ("metric", "expression", "proxy KL low / full", "perplexity"):
        table.add_column(col)
    results = []
    for name, policy, proxy in tqdm(rows, desc="full protocol"):
        ppl = full_protocol(s, policy)
        expr = policy.metric
        results.append({"name": name, "metric": expr, "proxy": proxy, "perplexity": ppl})
        table.add_row(name, expr, "" if proxy is None else f"{proxy[0]:.4f} / {proxy[1]:.4f}", f"{ppl:.2f}")
    Console(width=200).print(table)
    if hof:
        best = parse(hof[0][0])
        print("discovered metric (hall of fame #1, chosen on calibration data):", best)
        print("LaTeX:", to_latex(best))
        args.out.mkdir(parents=True, exist_ok=True)
        tag = args.pattern.replace(":", "-")
        (args.out / f"metric_{tag}.json").write_text(to_json(best, {"pattern": args.pattern, "sparsity": args.sparsity}))
        (args.out / f"result_{tag}.json").write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(args).items()}, "minutes": minutes, "counts": c,
            "reached_wanda": reached, "results": results, "state": gp.state_dict()}, default=str) + "\n")


if __name__ == "__main__":
    main()
