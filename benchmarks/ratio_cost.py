"""Cost of one layer-wise ratio candidate with cached score orders against re-pruning from scratch.

stories260K, Wanda, 64 calibration windows of 256 tokens (tinystories:0-499, seed 0), KL-to-dense
proxy on 16 other windows of tinystories:0-499. Random candidates of the ``per_block`` space, pruned three ways:
    cached      masks by threshold lookup on cached per-row orders
    one-shot    scores and per-row top-k recomputed from cached statistics
    scratch     what a naive search pays: a fresh copy pruned by the full sequential protocol
                (calibration forward passes included)
then scored by the same proxy forward. Also the achieved global sparsity of every candidate,
counted in weights.

    python benchmarks/ratio_cost.py --candidates 20 --scratch 3
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import torch

from autoprune.evaluation.proxy import ProxyEvaluator
from autoprune.evaluation.ratio_proxy import RatioProxy
from autoprune.jobs.common import calibration_windows
from autoprune.models import load_model
from autoprune.pruning.engine import apply_policy, collect_stats, prune_sequential
from autoprune.pruning.policy import Policy
from autoprune.search.allocation_space import load_space


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--scratch", type=int, default=3, help="candidates also pruned from scratch (slow)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = random.Random(0)

    lm = load_model("stories260K", dtype="float32", device="cpu")
    calib = calibration_windows(lm.tokenizer, "tinystories:0-499", 64, 256, 0)
    proxy_windows = calibration_windows(lm.tokenizer, "tinystories:0-499", 16, 256, 1)
    dense = lm.model
    t0 = time.perf_counter()
    stats = collect_stats(dense, calib, progress=False)
    stats_s = time.perf_counter() - t0
    evaluator = ProxyEvaluator(copy.deepcopy(dense), stats, proxy_windows, proxy_batch=4)
    space = load_space("per_block")
    summary, rows = [], []
    for s in args.sparsity:
        base = Policy.from_method("wanda", s)
        t0 = time.perf_counter()
        proxy = RatioProxy(evaluator, base)
        order_s = time.perf_counter() - t0
        sizes = tuple({n.split(".", 3)[3]: lin.weight.numel() for n, lin in blk.items()} for blk in proxy.blocks)
        total = sum(sum(b.values()) for b in sizes)
        lookup, oneshot, forward, low, scratch = [], [], [], [], []
        for i in range(args.candidates):
            policy = space.decode({p.name: rng.uniform(p.low, p.high) for p in space.params(len(sizes))}, base, sizes)
            ratios = proxy.ratios(policy)
            lookup.append(timed(lambda: [proxy.prune_layer(n, r) for n, r in ratios.items()]))
            zeros = sum(int((lin.weight == 0).sum()) for lin in evaluator.linears.values())  # counted in weights
            forward.append(timed(lambda: rows.append((s, i, zeros, round(s * total), total, evaluator.loss()[0]))))
            low.append(timed(lambda: evaluator.loss(1)))
            evaluator.restore()
            oneshot.append(timed(lambda: apply_policy(evaluator.model, policy, stats)))
            evaluator.restore()
            if i < args.scratch:
                scratch.append(timed(lambda: prune_sequential(copy.deepcopy(dense), policy, calib, progress=False)))
        m = statistics.mean
        summary.append((s, order_s, m(lookup), m(oneshot), m(scratch), m(forward), m(low)))

    print(f"\nachieved global sparsity of every candidate (prunable weights: {rows[0][4]})")
    print(f"{'target':>6} {'cand':>4} {'zeros':>8} {'round(S*N)':>10} {'achieved':>10} {'exact':>5} {'proxy KL':>9}")
    for s, i, zeros, want, total, kl in rows:
        print(f"{s:>6g} {i:>4} {zeros:>8} {want:>10} {zeros / total:>10.7f} {'yes' if zeros == want else 'NO':>5} {kl:>9.4f}")
    print(f"\nper ratio candidate (calibration statistics once: {stats_s:.2f} s; torch threads {args.threads})")
    print("pruning: cached = threshold lookup on cached orders, one-shot = scores + top-k from cached statistics,"
          " scratch = fresh copy + full sequential protocol (64 x 256 calibration tokens)")
    print(f"proxy forward: all {len(proxy_windows)} proxy windows, or the first proxy batch (4 windows, the low rung);"
          " a candidate = its pruning + the same proxy forward")
    head = (f"{'target':>6} {'orders':>8} {'cached':>9} {'one-shot':>9} {'scratch':>9} {'fwd all':>8} {'fwd low':>8}"
            f" {'pruning scratch/cached':>22} {'candidate all':>13} {'candidate low':>13}")
    print(head + "\n" + "-" * len(head))
    for s, order_s, lk, os_, sc, fw, lo in summary:
        print(f"{s:>6g} {order_s:>7.3f}s {lk * 1e3:>7.1f}ms {os_ * 1e3:>7.1f}ms {sc:>8.2f}s {fw:>7.3f}s {lo:>7.3f}s"
              f" {sc / lk:>21.0f}x {(sc + fw) / (lk + fw):>12.1f}x {(sc + lo) / (lk + lo):>12.1f}x")


if __name__ == "__main__":
    main()
