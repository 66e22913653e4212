"""GP metric search on stories260K within a time budget, then the full-protocol comparison table.

    python benchmarks/gp_search.py --pattern unstructured --budget-min 20
    python benchmarks/gp_search.py --pattern 2:4 --budget-min 20 [--seeds wanda,ria,pruner-zero]

Search selects on calibration data only: the proxy windows (tinystories:0-499, seed 1) rank the
candidates, and the full sequential protocol (64 x 256 calibration tokens, seed 0) scored on 32
other windows of tinystories:0-499 (seed 2) picks the discovered metric among the hall of fame's
finalists. Finalists and baselines are then scored on every 256-token window of tinystories:500-999.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gp_common import pruned, setup  # noqa: E402

from autoprune.evaluation.perplexity import perplexity  # noqa: E402
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
    ap.add_argument("--top", type=int, default=5,
                    help="hall-of-fame finalists; the sequential protocol on calibration-side windows picks one")
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
    wanda = {"low": ev.evaluate(base, low).loss, "high": ev.evaluate(base).loss,
             "seq": ev.evaluate(base, sequential=True).loss}
    print(f"setup {time.perf_counter() - t_setup:.1f}s; wanda proxy loss "
          + ", ".join(f"{k} {v:.4f}" for k, v in wanda.items()))

    t0 = time.perf_counter()
    budget = args.budget_min * 60
    reached: dict[str, tuple[int, float]] = {}
    bar = tqdm(total=int(budget), desc="gp search (s)", unit="s")
    while time.perf_counter() - t0 < budget and not gp.done():
        cands = gp.ask(8)
        for cand in cands:
            res = ev.evaluate(cand.policy, cand.batches, cand.sequential)
            gp.tell(cand, res)
            fid = cand.tag["fidelity"]
            if fid not in reached and res.ok and res.loss <= wanda[fid]:
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
    for fid in ("low", "high", "seq"):
        if fid in reached:
            print(f"first metric at least as good as Wanda on the {fid}-fidelity proxy: "
                  f"candidate {reached[fid][0]}, {reached[fid][1]:.2f} min")
        else:
            print(f"no metric reached Wanda on the {fid}-fidelity proxy")

    hof = gp.hall_of_fame()[: args.top]
    rows = [(name, Policy(metric=name, sparsity=args.sparsity, pattern=args.pattern), None)
            for name in ("magnitude", "wanda", "ria")]
    rows += [(f"gp #{i + 1}", replace(base, metric=h["key"]), (h["low"], h["high"], h["seq"])) for i, h in enumerate(hof)]
    table = Table(title=f"stories260K {args.pattern} {args.sparsity:.0%}: full sequential protocol, perplexity on "
                        f"32 calibration-side windows (tinystories:0-499, seed 2) and on tinystories:500-999 (dense 5.52)")
    for col in ("metric", "expression", "proxy KL low / full / seq", "ppl 0-499 (select)", "ppl 500-999"):
        table.add_column(col)
    results = []
    for name, policy, proxy in tqdm(rows, desc="full protocol"):
        model = pruned(s, policy)
        select_ppl, ppl = (perplexity(model, w, batch_size=8).perplexity for w in (s.select, s.heldout))
        results.append({"name": name, "metric": policy.metric, "proxy": proxy, "select_perplexity": select_ppl,
                        "perplexity": ppl})
    finalists = [r for r in results if r["proxy"] is not None]
    chosen = min(finalists, key=lambda r: r["select_perplexity"]) if finalists else None
    for r in results:
        mark = " (chosen)" if r is chosen else ""
        proxy = "" if r["proxy"] is None else " / ".join(f"{x:.4f}" for x in r["proxy"])
        table.add_row(r["name"] + mark, r["metric"], proxy, f"{r['select_perplexity']:.2f}", f"{r['perplexity']:.2f}")
    Console(width=200).print(table)
    if chosen is not None:
        best = parse(chosen["metric"])
        print(f"discovered metric ({chosen['name']} of the hall of fame, chosen on calibration data):", best)
        print("LaTeX:", to_latex(best))
        args.out.mkdir(parents=True, exist_ok=True)
        tag = args.pattern.replace(":", "-")
        (args.out / f"metric_{tag}.json").write_text(to_json(best, {"pattern": args.pattern, "sparsity": args.sparsity}))
        (args.out / f"result_{tag}.json").write_text(json.dumps({
            "args": {k: str(v) for k, v in vars(args).items()}, "minutes": minutes, "counts": c,
            "reached_wanda": reached, "results": results, "state": gp.state_dict()}, default=str) + "\n")


if __name__ == "__main__":
    main()
