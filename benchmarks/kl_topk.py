"""What the top-k dense reference costs the KL proxy in fidelity, and what it saves in memory.

On one set of proxy windows, a spread of pruned models (Wanda at several sparsities, random
per-block allocations) is scored by the KL to the full dense distributions and by the KL of the
top-k + tail coarsening (``autoprune.evaluation.kl``) for several k. Printed per k: the reference's
memory, the mean and worst relative gap to the full KL, and the Spearman correlation of the two
rankings.

    python benchmarks/kl_topk.py --model smollm2-135m --seqlen 512 --windows 8
"""

from __future__ import annotations

import argparse
import random
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--calib", default="c4")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=12)
    ap.add_argument("--tops", default="16,64,256,1024")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    from scipy.stats import spearmanr

    from autoprune.commands import quiet_libraries
    from autoprune.evaluation.kl import DenseReference, kl_to_dense
    from autoprune.jobs.common import calibration_windows
    from autoprune.models import load_model
    from autoprune.pruning.engine import apply_policy, collect_stats
    from autoprune.pruning.policy import Policy

    quiet_libraries()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, "float32", "cpu")
    model = lm.model
    calib = calibration_windows(lm.tokenizer, args.calib, 16, args.seqlen, 0)
    windows = calibration_windows(lm.tokenizer, args.calib, args.windows, args.seqlen, 1)
    stats = collect_stats(model, calib, batch_size=4, progress=False)
    tops = [int(t) for t in args.tops.split(",")]
    refs = {"full": DenseReference(model, windows, 4, top=None)}
    refs.update({k: DenseReference(model, windows, 4, top=k) for k in tops})
    dense = {n: p.data.clone() for n, p in model.named_parameters()}
    rng = random.Random(0)
    policies = [Policy(sparsity=s) for s in (0.3, 0.4, 0.5, 0.6, 0.7)]
    n_blocks = len(stats.layers) // 7 if len(stats.layers) % 7 == 0 else None
    while len(policies) < args.candidates and n_blocks:
        s = rng.choice((0.5, 0.6, 0.7))
        r = [min(0.95, max(0.0, s + rng.uniform(-0.15, 0.15))) for _ in range(n_blocks)]
        mean = sum(r) / len(r)
        policies.append(Policy(sparsity=s, allocation="explicit", block_ratios=tuple(x - mean + s for x in r)))
    scores: dict = {k: [] for k in refs}
    t0 = time.perf_counter()
    for p in policies:
        with torch.no_grad():
            apply_policy(model, p, stats)
            for k, ref in refs.items():
                scores[k].append(kl_to_dense(model, ref))
            for n, q in model.named_parameters():
                q.data.copy_(dense[n])
    full = scores["full"]
    print(f"{args.model}: {len(policies)} pruned models, {args.windows} x {args.seqlen} proxy tokens, "
          f"vocabulary {model.config.vocab_size:,} ({time.perf_counter() - t0:.0f} s)")
    print(f"{'reference':>10} {'memory MB':>10} {'mean gap':>9} {'worst gap':>10} {'spearman':>9}")
    for k, ref in refs.items():
        gaps = [(f - c) / f for f, c in zip(full, scores[k])]
        rho = spearmanr(full, scores[k]).statistic
        print(f"{str(k):>10} {ref.bytes / 2**20:10.1f} {sum(gaps) / len(gaps):9.2%} {max(gaps):10.2%} {rho:9.3f}")
    print("gap: (full KL - top-k KL) / full KL, never negative (the coarsened KL is a lower bound)")


if __name__ == "__main__":
    main()
