"""Cost of one layer-wise ratio candidate with cached score orders against re-pruning from scratch.

stories260K, Wanda, 64 calibration windows of 256 tokens (tinystories:0-499, seed 0), KL-to-dense
proxy on 16 other windows of tinystories:0-499. Random candidates of the ``per_block`` space:
    cached      masks by threshold lookup on cached per-row orders + one proxy forward
    one-shot    scores and per-row top-k recomputed from cached statistics + one proxy forward
    scratch     what a naive search pays: a fresh copy pruned by the full sequential protocol
                (calibration forward passes included) + one proxy forward
Also the masks alone (lookup against scoring + top-k), and the achieved global sparsity of
every candidate, counted in weights.

    python benchmarks/ratio_cost.py --candidates 20 --scratch 3
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import torch

from autoprune.evaluation.kl import kl_to_dense
from autoprune.evaluation.proxy import ProxyEvaluator
from autoprune.evaluation.ratio_proxy import RatioProxy, ranks_mask
from autoprune.jobs.common import calibration_windows
from autoprune.models import load_model
from autoprune.pruning.engine import collect_stats, prune_sequential
from autoprune.pruning.masks import make_mask
from autoprune.pruning.metrics import wanda
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
    evaluator = ProxyEvaluator(copy.deepcopy(dense), stats, proxy_windows)
    space = load_space("per_block")
    summary, rows = [], []
    for s in args.sparsity:
        base = Policy.from_method("wanda", s)
        t0 = time.perf_counter()
        proxy = RatioProxy(evaluator, base)
        order_s = time.perf_counter() - t0
        sizes = tuple({n.split(".", 3)[3]: lin.weight.numel() for n, lin in blk.items()} for blk in proxy.blocks)
        total = sum(sum(b.values()) for b in sizes)
        cached, oneshot, scratch, mask_lookup, mask_scored = [], [], [], [], []
        for i in range(args.candidates):
            policy = space.decode({p.name: rng.uniform(p.low, p.high) for p in space.params(len(sizes))}, base, sizes)
            res = proxy.evaluate(policy)
            cached.append(res.seconds)
            # the achieved sparsity, counted in weights on the pruned model
            for name, r in proxy.ratios(policy).items():
                proxy.prune_layer(name, r)
            zeros = sum(int((lin.weight == 0).sum()) for lin in evaluator.linears.values())
            evaluator.restore()
            rows.append((s, i, zeros, round(s * total), total, res.loss))
            oneshot.append(evaluator.evaluate(policy).seconds)
            ratios = proxy.ratios(policy)
            mask_lookup.append(timed(lambda: [ranks_mask(proxy.ranks[n], r) for n, r in ratios.items()]))
            mask_scored.append(timed(lambda: [make_mask(wanda(lin.weight.data, stats.layers[n].X, None), ratios[n], None)
                                              for n, lin in evaluator.linears.items()]))
            if i < args.scratch:
                def from_scratch():
                    model = copy.deepcopy(dense)
                    prune_sequential(model, policy, calib, progress=False)
                    kl_to_dense(model, evaluator.reference)
                scratch.append(timed(from_scratch))
        m = statistics.mean
        summary.append((s, order_s, m(cached), m(oneshot), m(scratch), m(mask_lookup), m(mask_scored)))

    print(f"\nachieved global sparsity of every candidate (prunable weights: {rows[0][4]})")
    print(f"{'target':>6} {'cand':>4} {'zeros':>8} {'round(S*N)':>10} {'achieved':>10} {'exact':>5} {'proxy KL':>9}")
    for s, i, zeros, want, total, kl in rows:
        print(f"{s:>6g} {i:>4} {zeros:>8} {want:>10} {zeros / total:>10.7f} {'yes' if zeros == want else 'NO':>5} {kl:>9.4f}")
    print(f"\nseconds per ratio candidate (calibration statistics once: {stats_s:.2f} s; torch threads {args.threads})")
    head = (f"{'target':>6} {'orders s':>8} {'cached':>8} {'one-shot':>9} {'scratch':>8} {'scratch/cached':>14}"
            f" {'one-shot/cached':>15} {'mask lookup':>11} {'mask scored':>11} {'mask ratio':>10}")
    print(head + "\n" + "-" * len(head))
    for s, order_s, c, o, sc, ml, ms in summary:
        print(f"{s:>6g} {order_s:>8.3f} {c:>8.3f} {o:>9.3f} {sc:>8.3f} {sc / c:>13.1f}x {o / c:>14.2f}x"
              f" {ml * 1e3:>9.2f}ms {ms * 1e3:>9.2f}ms {ms / ml:>9.1f}x")


if __name__ == "__main__":
    main()
