"""How fast and how faithful the GP's fast proxy is, against the naive protocol, on stories260K in one run.

    python benchmarks/gp_speed.py --expressions 30 --gp-minutes 3

Naive protocol: for every candidate, sequential pruning of a fresh copy (64 x 256 calibration
tokens) and perplexity on every 256-token window of tinystories:500-999 (the full evaluation).
Fast protocol: the GP search (search_spaces/gp.yaml, no seeds) with statistics computed once,
one-shot masks, the low-fidelity proxy (KL to dense on the first proxy batch, 2 x 256 tokens), the rank-key cache,
degenerate-metric rejection, the mask-hash cache, full-fidelity promotion of the best and the
sequential rung (within gp.yaml's share of the evaluation time; ``--sequential 0`` turns it off).
``--per-forward K`` stacks K one-shot candidates into one forward pass: on a GPU, where a small
model's forward is launch-bound, that is most of a candidate's cost (``--device cuda``).
Fidelity: Spearman correlation between proxy fitness and full evaluation over random expressions.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table
from scipy.stats import spearmanr
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gp_common import evaluate_candidates, full_protocol, setup  # noqa: E402

from autoprune.evaluation.proxy import ProxyEvaluator  # noqa: E402
from autoprune.pruning.policy import Policy  # noqa: E402
from autoprune.pruning.simplify import is_degenerate, rank_form  # noqa: E402
from autoprune.search.base import SearchContext  # noqa: E402
from autoprune.search.gp import GPStrategy  # noqa: E402


def random_expressions(ev: ProxyEvaluator, base: Policy, n: int, seed: int) -> list[str]:
    """``n`` random GP trees with distinct masks and usable scores (rank forms, as the search evaluates them)."""
    gen = GPStrategy(SearchContext(base, (), ev.max_batches, seed, Path(".")), {"population": 2, "generations": 1})
    keys: list[str] = []
    while len(keys) < n:
        e = gen.random_trees(1)[0]
        key = str(rank_form(e))
        if is_degenerate(e) or key in keys:
            continue
        res = ev.evaluate(Policy(metric=key, sparsity=base.sparsity, pattern=base.pattern), 1)
        if res.ok and not res.cached:  # usable scores, and masks no earlier expression gave
            keys.append(key)
    return keys


def run_gp(ev: ProxyEvaluator, base: Policy, space: dict, minutes: float, seed: int,
           per_forward: int) -> tuple[dict, float, list[float]]:
    gp = GPStrategy(SearchContext(base, (), ev.max_batches, seed, Path(".")), space)
    fresh_seconds = []
    t0 = time.perf_counter()
    with tqdm(total=int(minutes * 60), desc="gp with fast proxy (s)") as bar:
        while time.perf_counter() - t0 < minutes * 60:
            cands = gp.ask(max(8, per_forward))
            for cand, res in zip(cands, evaluate_candidates(ev, cands, per_forward)):
                gp.tell(cand, res)
                if cand.tag["fidelity"] == "low" and res.ok and not res.cached:
                    fresh_seconds.append(res.seconds)
            bar.n = int(time.perf_counter() - t0)
            bar.refresh()
    return gp.counts, (time.perf_counter() - t0) / 60, fresh_seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--expressions", type=int, default=30)
    ap.add_argument("--gp-minutes", type=float, default=3.0)
    ap.add_argument("--pattern", default="unstructured")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--per-forward", type=int, default=1, help="one-shot candidates stacked into one forward pass")
    ap.add_argument("--sequential", type=int, default=None, help="override gp.yaml's sequential rung (0: off)")
    args = ap.parse_args()

    s = setup(device=args.device)
    base = Policy(metric="wanda", sparsity=0.5, pattern=args.pattern)
    ev = s.evaluator

    # fast protocol: a real GP run on a fresh evaluator (empty caches)
    fresh_ev = ProxyEvaluator(s.model, ev.stats, s.proxy, "kl", ev.batch_size, proxy_batch=ev.proxy_batch,
                              calib_windows=s.calib)
    space = yaml.safe_load(Path("search_spaces/gp.yaml").read_text())
    space.update(generations=100000, **({} if args.sequential is None else {"sequential": args.sequential}))
    counts, gp_min, fresh = run_gp(fresh_ev, base, space, args.gp_minutes, args.seed, args.per_forward)
    fast_rate = counts["proposed"] / gp_min
    plain_rate = 60 / statistics.mean(fresh)

    # fidelity and the naive protocol, on random expressions
    keys = random_expressions(ev, base, args.expressions, args.seed + 1)
    low, high, full, naive_seconds = [], [], [], []
    for key in tqdm(keys, desc="naive protocol (full evaluation)"):
        policy = Policy(metric=key, sparsity=0.5, pattern=args.pattern)
        low.append(ev.evaluate(policy, 1).loss)
        high.append(ev.evaluate(policy).loss)
        t0 = time.perf_counter()
        ppl = full_protocol(s, policy)
        naive_seconds.append(time.perf_counter() - t0)
        full.append(ppl if math.isfinite(ppl) else math.inf)
    naive_rate = 60 / statistics.mean(naive_seconds)
    rho_low = spearmanr(low, full).statistic
    rho_high = spearmanr(high, full).statistic

    skipped = counts["cache_hits"] + counts["degenerate"] + counts["mask_hits"]
    table = Table(title=f"stories260K {args.pattern} 50% on {args.device}, {args.per_forward} candidates per forward, "
                        f"sequential rung {space['sequential']}: GP candidates per minute and proxy fidelity (one run, 1 CPU thread)")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("naive protocol: seconds per candidate (sequential prune + full ppl, 754 x 256 tokens)",
                  f"{statistics.mean(naive_seconds):.2f}")
    table.add_row("naive protocol: candidates per minute", f"{naive_rate:.2f}")
    low_tokens = f"{ev.proxy_batch} x {s.proxy.shape[1]} tokens"
    plain = "plain" if args.per_forward == 1 else f"stacked ({args.per_forward} per forward)"
    table.add_row(f"{plain} one-shot proxy ({low_tokens}, no cache): candidates per minute",
                  f"{plain_rate:.1f} ({plain_rate / naive_rate:.0f}x)")
    table.add_row(f"GP with fast proxy: candidates in {gp_min:.1f} min", str(counts["proposed"]))
    table.add_row("GP with fast proxy: candidates per minute", f"{fast_rate:.1f}")
    table.add_row("speed-up over the naive protocol", f"{fast_rate / naive_rate:.0f}x")
    table.add_row("skipped: rank-key cache (canonical / rank-equivalent forms)",
                  f"{counts['cache_hits']} ({counts['cache_hits'] / counts['proposed']:.1%})")
    table.add_row("skipped: degenerate after simplification", f"{counts['degenerate']} ({counts['degenerate'] / counts['proposed']:.1%})")
    table.add_row("skipped: mask-hash cache (forward pass avoided)", f"{counts['mask_hits']} ({counts['mask_hits'] / counts['proposed']:.1%})")
    table.add_row("skipped in total", f"{skipped / counts['proposed']:.1%}")
    table.add_row("proxy evaluations that ran a forward (low + promoted + sequential)",
                  f"{counts['evaluated'] - counts['mask_hits']}")
    table.add_row(f"Spearman rho, low-fidelity proxy ({low_tokens}) vs full evaluation ({len(keys)} random expressions)",
                  f"{rho_low:.3f}")
    table.add_row(f"Spearman rho, full-fidelity proxy ({len(s.proxy)} x {s.proxy.shape[1]}) vs full evaluation",
                  f"{rho_high:.3f}")
    Console(width=160).print(table)
    detail = Table(title="random expressions: proxy KL (low / full fidelity) and full-protocol perplexity")
    for col in ("expression", "KL low", "KL full", "perplexity"):
        detail.add_column(col)
    for key, a, b, c in sorted(zip(keys, low, high, full), key=lambda r: r[3]):
        detail.add_row(key, f"{a:.4f}", f"{b:.4f}", f"{c:.2f}")
    Console(width=160).print(detail)


if __name__ == "__main__":
    main()
