"""A searched structured plan against uniform width and blocks alone, at measured decode speed-ups.

For each target speed-up (this machine, batch 1, decode timed on copies cut to each plan's shape):

  searched         ``--search`` (tpe, nsga2 or evo) over which blocks go and the uniform KV-group and
                   MLP-channel removal of the rest, ``--trials`` trials (the families' plans first),
                   each timed and scored by the one-shot proxy on ``--proxy-windows`` windows of the
                   selection data; the ``--finalists`` best by proxy, timed again, and the families'
                   plans shrunk for real (sequential, ``--importance``, least squares) and the lowest
                   selection perplexity kept (``autoprune shrink --speedup``);
  family-selected  the families' least-removal plans (depth, width, width+heads, mixed; found by
                   bisection as the search starts, its seeds), the lowest selection perplexity kept
                   (``autoprune shrink --search families``);
  uniform width    the better of width and width+heads on the selection windows;
  blocks only      the depth family: ShortGPT, the lowest Block Influence blocks dropped.

Selection and proxy windows: disjoint windows of ``--select`` (default as ``shrink``: wikitext2-valid,
or for TinyStories calibration its windows the calibration did not draw). WikiText-2 test
perplexity chooses nothing. Tokens/s: every model timed again at the end,
interleaved, a ``--prompt``-token prompt and ``--new-tokens`` greedy tokens with a KV cache, batch 1
and batch 8, medians of ``--repeats`` rounds, ``--threads`` thread(s).

    taskset -c 1 python benchmarks/structured_search.py --model smollm2-135m --targets 1.3,1.5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--targets", default="1.3,1.5")
    ap.add_argument("--search", default="tpe")
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--finalists", type=int, default=3)
    ap.add_argument("--proxy-windows", type=int, default=4)
    ap.add_argument("--calib", default="c4")
    ap.add_argument("--calib-windows", type=int, default=16)
    ap.add_argument("--select", default=None, help="data the proxy scores on and the finalists and baselines are "
                    "chosen on (default: as shrink)")
    ap.add_argument("--select-windows", type=int, default=16)  # as shrink
    ap.add_argument("--eval", default="wikitext2")
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--importance", default="activation")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from autoprune.commands import quiet_libraries
    from autoprune.evaluation import perplexity
    from autoprune.jobs.shrink import ShrinkConfig, search_windows
    from autoprune.jobs.common import calibration_windows, evaluation_windows
    from autoprune.models import load_model
    from autoprune.structured import Importance, Planner, Probe, measure, parameters, shrink_model
    from autoprune.structured.driver import SearchSettings, search_plans
    from autoprune.structured.proxy import OneShot

    quiet_libraries()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lm = load_model(args.model, "float32", "cpu")
    dense = lm.model
    cfg = ShrinkConfig(model=args.model, out="/tmp/unused-structured-search", speedup=1.5, search=args.search,
                       trials=args.trials, proxy_windows=args.proxy_windows, calib=args.calib,
                       calib_windows=args.calib_windows, select=args.select, select_windows=args.select_windows,
                       seqlen=args.seqlen, seed=args.seed)
    calib = calibration_windows(lm.tokenizer, args.calib, args.calib_windows, args.seqlen, args.seed)
    select, proxy = search_windows(lm.tokenizer, cfg)
    test = evaluation_windows(lm.tokenizer, args.eval, args.seqlen, args.eval_windows)
    importance = Importance(args.importance)
    planner = Planner(dense)
    oneshot = OneShot(dense, calib, proxy, args.importance)
    influence = list(oneshot.influence)
    lay = planner.layout
    print(f"{args.model}: {parameters(dense):,} parameters; calibration {args.calib_windows} x {args.seqlen} tokens of "
          f"{args.calib}, selection {args.select_windows} windows of {cfg.select} and proxy {args.proxy_windows} "
          f"others; "
          f"{args.eval} test {len(test)} x {args.seqlen}; importance {args.importance}, least squares; "
          f"search {args.search}, {args.trials} trials, {args.finalists} finalists\n", flush=True)

    models, selected = {}, {}  # plan -> shrunk model; plan -> selection perplexity

    def real(plan):
        if plan not in models:
            m = copy.deepcopy(dense)
            shrink_model(m, plan, calib, importance, influence=influence)
            models[plan], selected[plan] = m, perplexity(m, select).perplexity
        return selected[plan]

    rows = []  # (target, label, plan, measured speed-up, proxy)
    for target in (float(t) for t in args.targets.split(",")):
        ts = time.perf_counter()
        found = search_plans(dense, planner, calib, proxy, SearchSettings(args.search, target, args.trials,
                             finalists=args.finalists, seed=args.seed, importance=args.importance), oneshot=oneshot)
        t_search = time.perf_counter() - ts
        proxy_of = {t.plan: t.loss for t in found.trials if t.loss is not None}
        for c in found.candidates:
            print(f"  {target:g}x  finalist {c.family:<12} {c.plan.describe(lay):<50} measured {c.speedup:.2f}x  "
                  f"proxy ppl {proxy_of[c.plan]:8.2f}  selection ppl {real(c.plan):8.2f}", flush=True)
        feasible = sum(t.feasible for t in found.trials)
        print(f"  {target:g}x  search: {len(found.trials)} trials ({feasible} feasible) in {t_search:.0f} s, "
              f"{t_search / len(found.trials):.1f} s a trial", flush=True)
        fams = found.seeds  # the families' plans, found by bisection as the search started
        for c in fams:
            print(f"  {target:g}x  {c.family:<12} {c.plan.describe(lay):<58} measured {c.speedup:.2f}x  "
                  f"proxy ppl {proxy_of[c.plan] if c.plan in proxy_of else oneshot.loss(c.plan):8.2f}  "
                  f"selection ppl {real(c.plan):8.2f}", flush=True)
        best = min(found.candidates, key=lambda c: real(c.plan))
        by = {c.family: c for c in fams}
        width = [by[f] for f in ("width", "width+heads") if f in by]
        for label, c in ((f"searched ({args.search})", best),
                         ("family-selected", min(fams, key=lambda c: real(c.plan))),
                         ("uniform width", min(width, key=lambda c: real(c.plan)) if width else None),
                         ("blocks only", by.get("depth"))):
            if c is not None:
                rows.append((target, label, c))

    shown = {c.plan: models[c.plan] for _, _, c in rows}
    names = {plan: plan.describe(lay) for plan in shown}
    speeds = {}
    for batch in (1, 8):
        speeds[batch] = measure({"dense": dense, **{names[p]: m for p, m in shown.items()}},
                                Probe(batch, args.prompt, args.new_tokens, args.repeats))
    ppl = {"dense": perplexity(dense, test).perplexity}
    ppl.update({names[p]: perplexity(m, test).perplexity for p, m in shown.items()})

    print(f"\ndecode: {args.prompt}-token prompt, {args.new_tokens} greedy tokens, {args.threads} thread(s), median of "
          f"{args.repeats} interleaved rounds; speed-up: decode time of dense / shrunk per round, batch 1")
    head = (f"{'target':>6}  {'':<16} {'plan':<60} {'params':>12} {'tok/s b1':>9} {'tok/s b8':>9} {'speed-up':>8} "
            f"{'sel. ppl':>9} {args.eval + ' ppl':>14}")
    print(head)
    print("-" * len(head))
    d = speeds[1]["dense"]
    print(f"{'':>6}  {'dense':<16} {'':<60} {parameters(dense):>12,} {d.decode:>9.1f} {speeds[8]['dense'].decode:>9.1f} "
          f"{1.0:>7.2f}x {perplexity(dense, select).perplexity:>9.2f} {ppl['dense']:>14.2f}")
    for target, label, c in rows:
        name = names[c.plan]
        s = speeds[1][name]
        up = statistics.median(x / y for x, y in zip(d.decode_runs, s.decode_runs))
        print(f"{target:>5g}x  {label:<16} {name + ' (' + c.family + ')':<60} {parameters(models[c.plan]):>12,} "
              f"{s.decode:>9.1f} {speeds[8][name].decode:>9.1f} {up:>7.2f}x {selected[c.plan]:>9.2f} "
              f"{ppl[name]:>14.2f}")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
