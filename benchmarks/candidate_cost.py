"""What one search candidate costs, and what a worker holds, on a real model.

Part 1, cost (one process, one run): a worker's start-up (statistics X, G, Hessians, the dense
reference), then seconds per candidate for
    one-shot, no update (Wanda mask)                     the GP / BO / RL candidate
    one-shot + SparseGPT update, + ADMM update            an evo arm: every layer reconstructed
    one-shot + update, two layers changed                 an evo child: the rest from the layer cache
    full sequential protocol (+ update)                   what validation and `autoprune prune` run
each as a ratio to the first, all on the same proxy windows.

Part 2, memory: the peak resident memory of a worker's set-up (model, X, G, Hessians, dense
reference) in a fresh process, for the model and for a random model of the same shape with a
262,144-token vocabulary, with the top-k dense reference and (``--full-reference``) without.

    python benchmarks/candidate_cost.py --model smollm2-135m --seqlen 512
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def worker_setup(model_name: str, vocab: int | None, seqlen: int, calib_n: int, proxy_n: int, top: int | None,
                 threads: int):
    """Everything a search worker builds, as ``ProxyWorker`` does, with every statistic collected."""
    import torch

    from autoprune.evaluation.proxy import ProxyEvaluator
    from autoprune.jobs.common import calibration_windows
    from autoprune.models import load_model
    from autoprune.pruning.engine import collect_stats

    torch.set_num_threads(threads)
    lm = load_model(model_name, "float32", "cpu")
    model = lm.model
    if vocab is not None:  # the same shape with a larger vocabulary, random weights
        from transformers import AutoModelForCausalLM

        cfg = model.config
        cfg.vocab_size = vocab
        model = AutoModelForCausalLM.from_config(cfg).eval()
    times = {}
    t = time.perf_counter()
    calib = calibration_windows(lm.tokenizer, "c4", calib_n, seqlen, 0)
    proxy = calibration_windows(lm.tokenizer, "c4", proxy_n, seqlen, 1)
    if vocab is not None:
        calib, proxy = calib % vocab, proxy % vocab
    stats = collect_stats(model, calib, hessian=True, gradients=True, batch_size=4, progress=False)
    times["statistics (X, H, G)"] = time.perf_counter() - t
    t = time.perf_counter()
    ev = ProxyEvaluator(model, stats, proxy, batch_size=4, proxy_batch=2, calib_windows=calib, reference_top=top)
    times["dense reference"] = time.perf_counter() - t
    return ev, times


def cost(args) -> None:
    from autoprune.pruning.policy import Policy

    ev, times = worker_setup(args.model, None, args.seqlen, args.calib_windows, args.proxy_windows, 256, args.threads)
    print(f"worker start-up on {args.model} ({args.calib_windows} x {args.seqlen} calibration tokens, "
          f"{args.proxy_windows} proxy windows):")
    for k, v in times.items():
        print(f"  {k:<28} {v:8.1f} s")
    rows = []

    def timed(label, fn, repeat=1):
        t = time.perf_counter()
        for _ in range(repeat):
            res = fn()
        rows.append((label, (time.perf_counter() - t) / repeat, res))
        print(f"  {label:<52} {rows[-1][1]:8.2f} s  loss {res.loss:.4f}", flush=True)

    s = args.sparsity
    ev.layer_cache = None  # every layer reconstructed: a whole candidate's cost
    print(f"seconds per candidate at {s:g}, proxy loss on all {args.proxy_windows} proxy windows:")
    timed("one-shot, no update (wanda)", lambda: ev.evaluate(Policy(sparsity=s)), 3)
    timed("one-shot + sparsegpt update (sparsegpt mask)", lambda: ev.evaluate(Policy(metric="sparsegpt", sparsity=s,
                                                                                     update="sparsegpt")))
    timed("one-shot + admm update (sparsegpt mask)", lambda: ev.evaluate(Policy(metric="sparsegpt", sparsity=s,
                                                                               update="admm")))
    from autoprune.pruning.engine import LayerCache, blocks_linears

    for update in ("sparsegpt", "admm"):
        ev.layer_cache = LayerCache()
        base = Policy(metric="wanda", sparsity=s, update=update)
        sizes = tuple({n.split(".", 3)[3]: lin.weight.numel() for n, lin in blk.items()}
                      for blk in blocks_linears(ev.model))
        from autoprune.search.evo import EvoStrategy
        from autoprune.search.base import SearchContext

        evo = EvoStrategy(SearchContext(base, sizes, ev.max_batches, 0, "."), {"max_moves": 1})
        evo.arm = ("wanda", update)
        counts = evo._from_blocks([s] * len(sizes))
        ev.evaluate(evo._policy(counts))  # fills the cache
        child = evo._mutate(counts)
        timed(f"evo child + {update} (2 layers changed, layer cache)", lambda: ev.evaluate(evo._policy(child)))
    ev.layer_cache = LayerCache()
    timed("full sequential protocol, wanda", lambda: ev.evaluate(Policy(sparsity=s), sequential=True))
    timed("full sequential protocol, sparsegpt", lambda: ev.evaluate(Policy.from_method("sparsegpt", s),
                                                                       sequential=True))
    base = rows[0][1]
    print("\nratio to one-shot without update:")
    for label, sec, _ in rows:
        print(f"  {label:<52} {sec / base:8.1f}x")


def memory(args) -> None:
    cases = [("model", None, 256)]
    if args.full_reference:
        cases.append(("model, full reference", None, None))
    cases.append((f"random, vocab {args.vocab:,}", args.vocab, 256))
    if args.full_reference:
        cases.append((f"random, vocab {args.vocab:,}, full reference", args.vocab, None))
    print(f"\npeak resident memory of a worker's set-up ({args.calib_windows} x {args.seqlen} calibration, "
          f"{args.proxy_windows} proxy windows, X + G + Hessians + dense reference):")
    for label, vocab, top in cases:
        cmd = [sys.executable, __file__, "--child", json.dumps([args.model, vocab, args.seqlen, args.calib_windows,
                                                                 args.proxy_windows, top, args.threads])]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        if out.returncode != 0:
            print(f"  {label:<44} failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  {label:<44} peak {r['peak_gb']:6.2f} GB   reference {r['reference_gb']:6.3f} GB   "
              f"Hessians {r['hessian_gb']:5.2f} GB   G {r['grad_gb']:5.2f} GB   params {r['params_m']:.0f}M")


def child(spec: str) -> None:
    import resource

    model, vocab, seqlen, calib_n, proxy_n, top, threads = json.loads(spec)
    ev, _ = worker_setup(model, vocab, seqlen, calib_n, proxy_n, top, threads)
    hess = sum(st.H.numel() * 4 for st in ev.stats.layers.values())
    grads = sum(g.numel() * g.element_size() for g in ev.stats.grads.values())
    print(json.dumps({"peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                      "reference_gb": ev.reference.bytes / 2**30, "hessian_gb": hess / 2**30,
                      "grad_gb": grads / 2**30, "params_m": sum(p.numel() for p in ev.model.parameters()) / 1e6}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--calib-windows", type=int, default=32)
    ap.add_argument("--proxy-windows", type=int, default=8)
    ap.add_argument("--sparsity", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vocab", type=int, default=262_144)
    ap.add_argument("--full-reference", action="store_true", help="also measure the full-vocabulary reference")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from autoprune.commands import quiet_libraries

    quiet_libraries()
    if args.child:
        child(args.child)
        return
    if not args.skip_cost:
        cost(args)
    memory(args)


if __name__ == "__main__":
    main()
