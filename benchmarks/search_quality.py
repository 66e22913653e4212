"""Does a search beat the strongest hand-made recipe? One table per model.

For each setting (a sparsity such as 0.7, or an N:M pattern such as 2:4) it runs
``autoprune search`` with the given budget. The search validates the recipes itself, under the
same calibration windows and the same sequential protocol as its candidates: Wanda and SparseGPT,
each uniform and with OWL's allocation (lambda tuned on the selection split; N:M: plain only).
The winner is chosen on the selection split among candidates and recipes; the table reports
everything on the evaluation data, which chose nothing.

    python benchmarks/search_quality.py --model stories260K --settings 0.5,0.7,2:4 --budget 15m
    python benchmarks/search_quality.py --model smollm2-135m --settings 0.7 --budget 30m \\
        --calib c4 --select wikitext2-valid --eval wikitext2 --seqlen 512
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

RECIPES = ("wanda", "wanda+owl", "sparsegpt", "sparsegpt+owl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="stories260K")
    ap.add_argument("--settings", default="0.5,0.7,2:4", help="comma-separated sparsities or N:M patterns")
    ap.add_argument("--budget", default="15m")
    ap.add_argument("--strategies", default="gp,evo")
    ap.add_argument("--calib")
    ap.add_argument("--select")
    ap.add_argument("--eval")
    ap.add_argument("--seqlen", type=int)
    ap.add_argument("--calib-windows", type=int, default=64)
    ap.add_argument("--select-windows", type=int, default=32)
    ap.add_argument("--proxy-windows", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=3)
    ap.add_argument("--owl-lambdas", default="0.05,0.1,0.15,0.2")
    ap.add_argument("--eval-windows", type=int, default=None, help="default: every window of the eval data")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads of the search's worker")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-search-quality"))
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    from autoprune.commands import quiet_libraries
    from autoprune.jobs.search import SearchConfig, search

    quiet_libraries()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for setting in [s.strip() for s in args.settings.split(",") if s.strip()]:
        nm = ":" in setting
        out = args.out / f"{args.model.replace('/', '_')}-{setting.replace(':', 'of')}-{stamp}"
        given = dict(model=args.model, budget=args.budget, strategies=args.strategies, out=out, seed=args.seed,
                     calib_windows=args.calib_windows, select_windows=args.select_windows,
                     eval_windows=args.eval_windows, cpus_per_worker=args.threads, proxy_windows=args.proxy_windows,
                     top_k=args.top_k, owl_lambdas=args.owl_lambdas,
                     tracking_uri=f"sqlite:///{(args.out / 'mlflow.db').resolve()}",
                     **({"pattern": setting} if nm else {"sparsity": float(setting)}))
        given.update({k: v for k, v in (("calib", args.calib), ("select", args.select), ("eval", args.eval),
                                        ("seqlen", args.seqlen)) if v is not None})
        cfg = SearchConfig.from_dict(given)
        t0 = time.monotonic()
        res = search(cfg, on_update=_progress(setting))
        wall = time.monotonic() - t0
        recipes = {b["name"]: b for b in res.baselines if "skipped" not in b}
        best_name = min((n for n in RECIPES if n in recipes), key=lambda n: recipes[n]["perplexity"], default=None)
        best = recipes[best_name]["perplexity"] if best_name else None
        row = {"setting": setting, "budget": args.budget, "wall_s": round(wall, 1), "candidates": res.candidates,
               "phases": res.phases, "winner": _describe(res.best.to_dict()), "recipe_returned": res.recipe,
               "winner_select": res.select_perplexity, "winner_eval": res.perplexity,
               "recipes": {n: {"eval": r["perplexity"], "select": r.get("select_perplexity"),
                               "owl_lambda": r["policy"]["owl_lambda"] if "+owl" in n else None}
                           for n, r in recipes.items()},
               "dense": recipes.get("dense", {}).get("perplexity"), "best_recipe": best_name,
               "ratio": res.perplexity / best if best and res.perplexity else None, "out": str(out)}
        rows.append(row)
        print(f"\n{setting}: winner {row['winner']}: eval ppl {row['winner_eval']}, best recipe {best_name} "
              f"{best}, ratio {row['ratio']}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.model.replace('/', '_')}-{stamp}.json").write_text(json.dumps(rows, indent=2) + "\n")
    print_table(args.model, rows)


def _progress(setting: str):
    last = [0.0]

    def show(status: dict) -> None:
        now = time.monotonic()
        if now - last[0] >= 60:
            last[0] = now
            best = status.get("best")
            loss = f"{best['result']['loss']:.4f}" if best else "-"
            print(f"[{setting}] {status['phase']}: {status.get('total', 0)} candidates, "
                  f"{max(0, status.get('left', 0)):.0f}s left, best proxy {loss}", flush=True)
    return show


def _describe(p: dict) -> str:
    alloc = p["allocation"]
    if alloc == "explicit":
        r = p["block_ratios"]
        alloc = f"per-projection ({min(r):.2f}-{max(r):.2f} per block)" if p.get("layer_ratios") else \
            f"per-block ({min(r):.2f}-{max(r):.2f})"
    elif alloc == "owl":
        alloc = f"owl(l={p['owl_lambda']:g})"
    metric = p["metric"] if len(p["metric"]) <= 40 else p["metric"][:37] + "..."
    return f"{metric} / {alloc} / {p['update']}"


def print_table(model: str, rows: list[dict]) -> None:
    def f(x):
        return "-" if x is None else f"{x:.2f}"

    head = ["setting", "budget", "wall", "candidates", "winner (eval ppl)", "select ppl", *RECIPES,
            "best recipe", "ratio"]
    print(f"\nsearch quality on {model} (eval ppl; recipes under the same calibration and protocol)")
    print(" | ".join(head))
    for r in rows:
        cands = " ".join(f"{k} {v}" for k, v in r["candidates"].items())
        rec = [f(r["recipes"].get(n, {}).get("eval")) + (f" (l={r['recipes'][n]['owl_lambda']:g})"
                                                          if n in r["recipes"] and r["recipes"][n]["owl_lambda"] else "")
               for n in RECIPES]
        print(" | ".join([r["setting"], r["budget"], f"{r['wall_s'] / 60:.1f}m", cands, f(r["winner_eval"]),
                          f(r["winner_select"]), *rec, r["best_recipe"] or "-", f(r["ratio"]) + "x"]))
        print(f"    winner: {r['winner']}" + (f" (recipe returned: {r['recipe_returned']})" if r["recipe_returned"]
                                                else "") + f"; phases {r['phases']}")


if __name__ == "__main__":
    main()
