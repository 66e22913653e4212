"""What a measured decode speed-up costs in quality: structured plans at 1.3x and 1.5x.

For each target speed-up, ``structured.Planner`` finds each family's least-removal plan whose
measured decode speed-up (batch 1, this machine) reaches it: depth (ShortGPT: blocks dropped by
Block Influence), width (MLP channels), width+heads (a KV group per block, then channels) and
mixed (half the depth plan's blocks, then channels). Every candidate is shrunk for real (width:
``--importance``, least-squares reconstruction) on ``--calib`` and scored by perplexity on
calibration-side selection windows (the calibration set's windows the calibration did not draw).
Printed per target:

  (a) the best structured plan: the candidate with the lowest selection perplexity (any family);
  (b) uniform width alone: the better of width and width+heads on the selection windows;
  (c) blocks alone: the depth candidate, ShortGPT, no reconstruction.

each with its WikiText-2 test perplexity (which chooses nothing) and its decode tokens/s,
timed again at the end: a ``--prompt``-token prompt, ``--new-tokens`` greedy tokens with a KV
cache, batch 1, all models interleaved, medians of ``--repeats`` rounds, one thread.

    python benchmarks/structured_quality.py --model smollm2-135m --targets 1.3,1.5
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
    ap.add_argument("--calib", default="c4")
    ap.add_argument("--calib-windows", type=int, default=16)
    ap.add_argument("--select-windows", type=int, default=8)
    ap.add_argument("--eval", default="wikitext2")
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--importance", default="activation")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from autoprune.commands import quiet_libraries
    from autoprune.evaluation import perplexity
    from autoprune.jobs.common import calibration_windows, evaluation_windows, selection_windows
    from autoprune.models import load_model
    from autoprune.structured import Importance, Planner, Probe, dense_block_influence, measure, parameters, shrink_model

    quiet_libraries()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    lm = load_model(args.model, "float32", "cpu")
    dense = lm.model
    calib = calibration_windows(lm.tokenizer, args.calib, args.calib_windows, args.seqlen, 0)
    select = selection_windows(lm.tokenizer, args.calib, args.select_windows, args.seqlen, 0, args.calib,
                               ((args.calib_windows, 0),))
    test = evaluation_windows(lm.tokenizer, args.eval, args.seqlen, args.eval_windows)
    importance = Importance(args.importance)
    planner = Planner(dense)
    influence = dense_block_influence(dense, calib)
    print(f"{args.model}: {parameters(dense):,} parameters; calibration {args.calib_windows} x {args.seqlen} tokens of "
          f"{args.calib}, selection {args.select_windows} other windows of it; {args.eval} test "
          f"{len(test)} x {args.seqlen}; importance {args.importance}, least-squares reconstruction\n")

    models, selected = {}, {}  # plan -> shrunk model; plan -> selection perplexity
    rows = []  # (target, label, candidate)
    for target in (float(t) for t in args.targets.split(",")):
        cands = planner.candidates(target)
        for c in cands:
            if c.plan not in models:
                m = copy.deepcopy(dense)
                shrink_model(m, c.plan, calib, importance, influence=influence)
                models[c.plan], selected[c.plan] = m, perplexity(m, select).perplexity
            print(f"  {target:g}x  {c.family:<12} {c.plan.describe(planner.layout):<40} measured {c.speedup:.2f}x  "
                  f"selection ppl {selected[c.plan]:.2f}", flush=True)
        by = {c.family: c for c in cands}
        width = [by[f] for f in ("width", "width+heads") if f in by]
        for label, c in (("(a) best plan", min(cands, key=lambda c: selected[c.plan])),
                         ("(b) width only", min(width, key=lambda c: selected[c.plan]) if width else None),
                         ("(c) blocks only", by.get("depth"))):
            if c is not None:
                rows.append((target, label, c))

    shown = {c.plan: models[c.plan] for _, _, c in rows}
    names = {plan: plan.describe(planner.layout) for plan in shown}
    speeds = measure({"dense": dense, **{names[p]: m for p, m in shown.items()}},
                     Probe(1, args.prompt, args.new_tokens, args.repeats))
    ppl = {"dense": perplexity(dense, test).perplexity}
    ppl.update({names[p]: perplexity(m, test).perplexity for p, m in shown.items()})
    d = speeds["dense"]

    print(f"\ndecode: {args.prompt}-token prompt, {args.new_tokens} greedy tokens, batch 1, {args.threads} thread(s), "
          f"median of {args.repeats} interleaved rounds")
    head = (f"{'target':>6}  {'':<16} {'plan (family)':<54} {'params':>12} {'decode tok/s':>12} {'speed-up':>8} "
            f"{'sel. ppl':>9} {args.eval + ' ppl':>14}")
    print(head)
    print("-" * len(head))
    print(f"{'':>6}  {'dense':<16} {'':<54} {parameters(dense):>12,} {d.decode:>12.1f} {1.0:>7.2f}x "
          f"{perplexity(dense, select).perplexity:>9.2f} {ppl['dense']:>14.2f}")
    for target, label, c in rows:
        name = names[c.plan]
        s = speeds[name]
        up = statistics.median(x / y for x, y in zip(d.decode_runs, s.decode_runs))
        print(f"{target:>5g}x  {label:<16} {name + ' (' + c.family + ')':<54} {parameters(models[c.plan]):>12,} "
              f"{s.decode:>12.1f} {up:>7.2f}x {selected[c.plan]:>9.2f} {ppl[name]:>14.2f}")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
